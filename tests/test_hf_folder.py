"""Hugging Face model folders as a source: save_pretrained folders in every weights layout, hub
cache snapshots and repo ids (offline), and the kinds a config's model_type settles (a Llama's
input_layernorm is an RMSNorm, Whisper's self_attn_layer_norm a LayerNorm, wav2vec2's first
feature-extractor norm a GroupNorm with a group per channel) so that the check verifies them."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import assert_bit_exact
from transcoder.rules.hf_naming import kinds_from_config

os.environ.setdefault("USE_TF", "0")


def test_config_naming_decides_only_what_its_family_says():
    paths = ["model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm",
             "model.norm", "model.layers.0.mlp.down_proj", "lm_head"]
    kinds, options = kinds_from_config({"model_type": "llama", "rms_norm_eps": 1e-6}, paths)
    assert kinds == {p: "RMSNorm" for p in paths[:3]}
    assert options["model.norm"] == {"eps": 1e-6}
    # a family not in the table decides nothing
    assert kinds_from_config({"model_type": "gemma"}, paths) == ({}, {})
    group = {"model_type": "wav2vec2", "feat_extract_norm": "group", "conv_dim": [16, 16]}
    conv = ["feature_extractor.conv_layers.0.layer_norm", "feature_extractor.conv_layers.1.conv"]
    kinds, options = kinds_from_config(group, conv)
    assert kinds == {conv[0]: "GroupNorm"} and options[conv[0]] == {"num_groups": 16}
    layer = dict(group, feat_extract_norm="layer")
    assert kinds_from_config(layer, conv)[0] == {conv[0]: "LayerNorm"}


transformers = pytest.importorskip("transformers", reason="transformers builds the tiny models")
torch = pytest.importorskip("torch")


def _tiny(name: str):
    T = transformers
    configs = {
        "llama": T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, max_position_embeddings=64),
        "whisper": T.WhisperConfig(vocab_size=64, pad_token_id=1, bos_token_id=2,
                                   eos_token_id=3, decoder_start_token_id=2, d_model=32,
                                   encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                                   decoder_attention_heads=4, encoder_ffn_dim=64,
                                   decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=32,
                                   max_target_positions=32),
        "wav2vec2": T.Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                                     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                                     feat_extract_norm="group"),
        "bert": T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64,
                             max_position_embeddings=64),
    }
    torch.manual_seed(0)
    return T.AutoModel.from_config(configs[name])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    for name in ("llama", "whisper", "wav2vec2", "bert"):
        _tiny(name).save_pretrained(root / name)
    return root


def _rows(out: str) -> dict[str, tuple[str, str]]:
    """``{layer: (status, kinds)}`` from the check's table (tab-separated when piped)."""
    rows = {}
    for line in out.splitlines():
        cells = line.split("\t")
        if len(cells) > 3 and cells[0] in ("SUCCESS", "FAIL", "INACCURATE", "NOT CHECKED",
                                           "SKIPPED"):
            rows[cells[1]] = (cells[0], cells[2])
    return rows


NORMS = {"llama": ("layers.0.input_layernorm", "RMSNorm -> RMSNormalization"),
         "whisper": ("encoder.layers.0.self_attn_layer_norm", "LayerNorm -> LayerNormalization"),
         "wav2vec2": ("feature_extractor.conv_layers.0.layer_norm",
                      "GroupNorm -> GroupNormalization"),
         "bert": ("encoder.layer.0.output.LayerNorm", "LayerNorm -> LayerNormalization")}


@pytest.mark.parametrize("name", sorted(NORMS))
def test_a_save_pretrained_folder_converts_and_every_norm_is_checked(cli, folders, tmp_path, name):
    code, out, err = cli(folders / name, tmp_path / "m.h5")
    assert code == 0, err
    rows = _rows(out)
    layer, kinds = NORMS[name]
    assert rows[layer] == ("SUCCESS", kinds)
    open_norms = [n for n, (s, _) in rows.items() if "norm" in n.lower() and s != "SUCCESS"]
    assert open_norms == []
    assert "Hugging Face folder" in err
    # and back: bit-exact against the folder's own safetensors
    code, _, err = cli(tmp_path / "m.h5", tmp_path / "back.safetensors")
    assert code == 0, err
    source, back = load_file(folders / name / "model.safetensors"), load_file(
        tmp_path / "back.safetensors")
    assert set(back) == set(source)
    for key, value in source.items():
        assert_bit_exact(back[key], value, key)


def test_sharded_and_bin_folders(cli, folders, tmp_path):
    model = _tiny("bert")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    # what transformers < 5 wrote with safe_serialization=False (5.x writes safetensors only)
    (tmp_path / "bin").mkdir()
    shutil.copy(tmp_path / "sharded" / "config.json", tmp_path / "bin")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    reference = {k: v.numpy() for k, v in model.state_dict().items()}
    for folder in ("sharded", "bin"):
        out = tmp_path / f"{folder}.safetensors"
        code, _, err = cli(tmp_path / folder, out, "--no-check")
        assert code == 0, err
        written = load_file(out)
        for key in written:
            assert_bit_exact(written[key], reference[key], key)


def _cache(tmp_path, folders, repo="org/tiny-llama", commit="0123abcd"):
    cache = tmp_path / "cache"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folders / "llama", repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return cache, repo_dir


def test_repo_id_and_cache_folders_resolve_offline(cli, folders, tmp_path, monkeypatch):
    cache, repo_dir = _cache(tmp_path, folders)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    reference = load_file(folders / "llama" / "model.safetensors")
    for source in ("org/tiny-llama", repo_dir, repo_dir / "snapshots" / "0123abcd"):
        out = tmp_path / "out.safetensors"
        code, _, err = cli(source, out, "--force", "--no-check")
        assert code == 0, (source, err)
        written = load_file(out)
        assert sorted(written) == sorted(reference)
        for key in reference:
            assert_bit_exact(written[key], reference[key], key)


def test_folders_that_cannot_be_read_are_one_line(cli, folders, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cases = {empty: "no weights", "org/absent": "no such model in the local Hugging Face cache"}
    bad = tmp_path / "badjson"
    shutil.copytree(folders / "bert", bad)
    (bad / "config.json").write_text("{" * 10)
    cases[bad] = "config.json is not valid JSON"
    for source, words in cases.items():
        code, out, err = cli(source, tmp_path / "x.h5")
        assert code == 2, (source, err)
        assert words in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "x.h5").exists()


def test_an_unknown_family_leaves_open_norms_open(cli, folders, tmp_path):
    """The config decides only for families in the table: a Llama folder whose model_type is
    unknown keeps its bias-free norms NOT CHECKED (never guessed)."""
    folder = tmp_path / "other"
    shutil.copytree(folders / "llama", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, model_type="somethingnew")))
    code, out, err = cli(folder, tmp_path / "m.h5")
    rows = _rows(out)
    assert rows["layers.0.input_layernorm"][0] == "NOT CHECKED"
    assert rows["layers.0.self_attn.q_proj"][0] == "SUCCESS"


@pytest.mark.parametrize("name", ["llama", "whisper"])
def test_the_folder_architecture_as_model(cli, folders, tmp_path, name):
    """``--model hf:DIR``: transformers builds the config's architecture (no remote code, no
    download); the weights fit it strictly and its classes decide the kinds, the config's naming
    where a class has no rule of its own (LlamaRMSNorm)."""
    code, out, err = cli(folders / name, tmp_path / "m.h5", "--model", f"hf:{folders / name}")
    assert code == 0, err
    rows = _rows(out)
    layer, kinds = NORMS[name]
    assert rows[layer] == ("SUCCESS", kinds)
    assert not [n for n, (s, _) in rows.items() if s != "SUCCESS"]


def test_default_inputs_follow_the_config(folders):
    from transcoder.models import hf

    config = json.loads((folders / "whisper" / "config.json").read_text())
    inputs = hf.default_inputs(config)
    assert inputs.input_shapes == ["1,16,64", "1,4"]          # 2 x max_source_positions frames
    assert inputs.input_dtypes == ["float32", "int64:64"]
    config = json.loads((folders / "llama" / "config.json").read_text())
    assert hf.default_inputs(config).input_dtypes == ["int64:64"]
    model = hf.build(folders / "llama")
    ids = torch.randint(0, 64, (1, 16))
    reference = transformers.AutoModel.from_pretrained(folders / "llama").eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, reference(input_ids=ids).last_hidden_state)


def test_remote_code_is_never_run(folders, tmp_path):
    from transcoder.errors import UsageError
    from transcoder.models import hf

    folder = tmp_path / "remote"
    shutil.copytree(folders / "bert", folder)
    (folder / "evil.py").write_text("import pathlib; pathlib.Path('PWNED').write_text('x')\n"
                                    "from transformers import PretrainedConfig\n"
                                    "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match="transformers cannot build this config"):
        hf.build(folder)
    assert not (folder / "PWNED").exists() and not os.path.exists("PWNED")


@pytest.mark.slow
@pytest.mark.parametrize("name, suffix", [("bert", ".keras"), ("llama", ".keras"),
                                          ("bert", ".tflite")])
def test_a_folder_to_a_keras_model_or_tflite_is_checked_and_loads(cli, folders, tmp_path, name,
                                                                   suffix):
    """``transcode DIR out.keras``: the folder's own architecture (transformers, from its
    config), rebuilt in Keras and checked on the written file; then loaded with Keras' or the
    TFLite runtime's own API and compared with the PyTorch model here, within 1e-4 of the
    output's magnitude. The input is the config's main input (token ids, 1 x 16)."""
    import numpy as np

    import transcoder  # noqa: F401  (registers our Keras layers)

    out = tmp_path / f"m{suffix}"
    code, stdout, err = cli(folders / name, out)
    assert code == 0, err
    assert "check passed" in stdout
    model = transformers.AutoModel.from_pretrained(folders / name).eval()
    ids = np.random.default_rng(1).integers(0, 64, (1, 16))
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(ids)).last_hidden_state.numpy()
    if suffix == ".keras":
        import keras

        got = keras.models.load_model(out)(ids)
        got = np.asarray(got[0] if isinstance(got, (list, tuple)) else got)
    else:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(out))
        runner = interpreter.get_signature_runner()
        (key,) = runner.get_input_details()
        outputs = runner(**{key: ids.astype(runner.get_input_details()[key]["dtype"])})
        got = next(np.asarray(v) for v in outputs.values() if np.shape(v) == expected.shape)
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(np.asarray(got, np.float64) - expected).max() <= 1e-4 * scale


def test_revision_picks_a_snapshot(cli, folders, tmp_path, monkeypatch):
    """``--revision`` picks a snapshot of a cached repo (a ref or a commit); an unknown one and
    a --revision for a plain file are one line, exit 2."""
    cache, repo_dir = _cache(tmp_path, folders)
    shutil.copytree(folders / "bert", repo_dir / "snapshots" / "beef1234")
    (repo_dir / "refs" / "v2").write_text("beef1234")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    for revision, reference in (("v2", "bert"), ("beef1234", "bert"), ("main", "llama")):
        out = tmp_path / f"{revision}.safetensors"
        code, _, err = cli("org/tiny-llama", out, "--revision", revision, "--no-check")
        assert code == 0, (revision, err)
        want = load_file(folders / reference / "model.safetensors")
        got = load_file(out)
        assert sorted(got) == sorted(want)
        for key in want:
            assert_bit_exact(got[key], want[key], key)
    code, out, err = cli("inspect", "org/tiny-llama", "--revision", "v2")   # v2 is the BERT
    assert code == 0, err
    assert "encoder.layer.0.attention.self.query.weight" in out and "input_layernorm" not in out
    for args, words in ((("org/tiny-llama", tmp_path / "x.h5", "--revision", "nope"),
                         "no snapshot for revision 'nope'"),
                        ((folders / "bert" / "model.safetensors", tmp_path / "x.h5", "--revision",
                          "v2"), "--revision picks a snapshot")):
        code, _, err = cli(*args, "--no-check")
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_check_of_a_folder_runs_its_own_model(cli, folders, tmp_path):
    """``transcode check DIR out.h5``: the folder's own architecture and main input (token ids
    from its config) run against the Keras rebuild holding the written weights."""
    out = tmp_path / "m.h5"
    code, _, err = cli(folders / "llama", out, "--no-check")
    assert code == 0, err
    code, stdout, err = cli("check", folders / "llama", out, "--report", tmp_path / "r.json")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["kind"] == "model" and report["passed"]
    assert report["input_shapes"] == [[1, 16]] and report["input_dtypes"] == ["int64"]
    assert max(e["max_abs_error"] for e in report["entries"]) < 1e-4


def _whisper_inputs(seed: int = 3):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((1, 16, 64)).astype(np.float32)   # 2 x max_source_positions
    return features, rng.integers(0, 64, (1, 4)).astype(np.int64)


def _run_artifact(path, suffix: str, inputs: dict) -> list:
    """The artifact run by its framework's own API; outputs in order."""
    if suffix == ".keras":
        import keras

        import transcoder  # noqa: F401  (registers our Keras layers)

        model = keras.models.load_model(path)
        return [np.asarray(o) for o in model([inputs[t.name] for t in model.inputs])]
    if suffix == ".savedmodel":
        import tensorflow as tf

        out = tf.saved_model.load(str(path)).signatures["serving_default"](
            **{k: tf.constant(v) for k, v in inputs.items()})
    else:
        from ai_edge_litert.interpreter import Interpreter

        out = Interpreter(model_path=str(path)).get_signature_runner()(**inputs)
    return [np.asarray(out[k]) for k in sorted(out, key=lambda k: int(k.split("_")[-1]))]


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".keras", ".tflite", ".savedmodel"])
def test_a_whisper_folder_converts_whole_and_checks(cli, folders, tmp_path, suffix):
    """``transcode WHISPER_DIR out.keras|.tflite|.savedmodel``: the whole encoder-decoder
    (its decoder's positional embedding, an ``nn.Embedding`` subclass whose forward slices its
    weight, is an Embedding layer the check pairs), fed the config's main input
    (``input_features``, 1 x mel bins x 2 x max_source_positions) and decoder ids by name;
    the artifact, run by its own framework, gives transformers' last hidden state and the
    encoder's within 1e-4 of their magnitude."""
    out = tmp_path / f"w{suffix}"
    code, stdout, err = cli(folders / "whisper", out)
    assert code == 0, err
    assert "check passed" in stdout
    features, ids = _whisper_inputs()
    model = transformers.AutoModel.from_pretrained(folders / "whisper").eval()
    with torch.no_grad():
        want = model(input_features=torch.from_numpy(features),
                     decoder_input_ids=torch.from_numpy(ids))
    want = [want.last_hidden_state.numpy(), want.encoder_last_hidden_state.numpy()]
    got = _run_artifact(out, suffix, {"input_features": features, "decoder_input_ids": ids})
    assert len(got) == 2
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert np.abs(g - w).max() <= 1e-4 * float(np.abs(w).max())
