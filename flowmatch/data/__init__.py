"""Data: built-in 2-D sets (:mod:`.toy`), files (:mod:`.files`), images (:mod:`.images`), the
standardisation (:mod:`.standardize`) and the finite :class:`Dataset` with its splits (:mod:`.dataset`); token
sequences and the built-in corpus (:mod:`.tokens`) and mixed-type tables (:mod:`.tables`).

Names are imported from their modules on first use.
"""

from flowmatch._lazy import lazy_exports

_EXPORTS = {
    "BUILTIN_CLASSES": "toy",
    "BUILTIN_IMAGE_SETS": "images",
    "BUILTIN_NAMES": "toy",
    "Batch": "streams",
    "CORPORA": "tokens",
    "Dataset": "dataset",
    "ENTROPY": "toy",
    "FILE_EXTENSIONS": "files",
    "GAUSSIAN_MIXTURES": "toy",
    "GaussianMixture": "toy",
    "IMAGE_EXTENSIONS": "images",
    "ImageSet": "images",
    "MAX_VALIDATION_ROWS": "dataset",
    "MIN_ROWS": "files",
    "RowSource": "sources",
    "SOURCE_ROWS": "sources",
    "SamplerSource": "sources",
    "Standardizer": "standardize",
    "Stream": "streams",
    "TABLE_NAMES": "toy",
    "TableCodec": "tables",
    "TokenData": "tokens",
    "Vocabulary": "tokens",
    "as_source": "sources",
    "entropy": "toy",
    "has_log_prob": "toy",
    "is_image_data": "images",
    "is_stream": "streams",
    "load_array": "files",
    "load_dataset": "dataset",
    "load_digits_images": "images",
    "load_image_folder": "images",
    "load_image_npz": "images",
    "load_image_set": "images",
    "load_labels": "files",
    "load_table": "files",
    "load_tokens": "tokens",
    "log_prob": "toy",
    "read_table": "tables",
    "sample_builtin": "toy",
    "source_from_config": "sources",
    "source_to_config": "sources",
    "split_batch": "streams",
    "stratified_split": "images",
    "to_model_scale": "images",
    "to_pixels": "images",
    "write_table": "tables",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
