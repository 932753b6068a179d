//! Pure submission rules: the dossier state machine, eligibility and completeness.
