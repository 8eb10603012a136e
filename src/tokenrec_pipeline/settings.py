"""Project settings (Kedro defaults apart from the hooks and the config loader arguments)."""

from kedro.config import OmegaConfigLoader

from tokenrec_pipeline.hooks.run_record import RunRecordHooks
from tokenrec_pipeline.hooks.validation import ArtefactManifestHooks, MlflowRunStatusHooks, ParameterValidationHooks

# kedro-mlflow registers its own hooks through its entry point; ours add the git commit and
# the dataset statistics to the MLflow run it opens.
# Validation (parameters first, then the input artefacts' manifest) runs before kedro-mlflow opens its run.
HOOKS = (RunRecordHooks(), ArtefactManifestHooks(), ParameterValidationHooks(), MlflowRunStatusHooks())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # conf/local/parameters*.yml override only the keys they name (deep merge), not whole stages.
    "merge_strategy": {"parameters": "soft"},
}
