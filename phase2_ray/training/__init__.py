"""Stages 2a/2b on Ray: placement, the training actors, the run plan and the speed trial."""
