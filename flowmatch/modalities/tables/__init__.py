"""Mixed-type tables: numeric columns on a straight path, categorical columns on the mixture path, one network
(:mod:`.modality`); their options (:mod:`.options`)."""
