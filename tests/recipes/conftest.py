import pytest

from tests.helpers import CONF_DIR


@pytest.fixture
def compose_cfg():
    """compose_cfg(*overrides) -> the composed config, as `python recipes/train.py` would see it."""
    from hydra import compose, initialize_config_dir

    def _compose(*overrides):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose
