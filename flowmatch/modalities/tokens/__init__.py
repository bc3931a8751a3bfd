"""Token sequences: discrete flow matching on the mixture path with a transformer (:mod:`.modality`); their
options (:mod:`.options`)."""
