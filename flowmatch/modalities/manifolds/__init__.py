"""Points on manifolds: Riemannian flow matching on geodesic paths (:mod:`.modality`); their options (:mod:`.options`)."""
