"""Reference modules in the legacy TF Hub format, and loading any BERT-family source."""

from __future__ import annotations

import numpy as np
import pytest

from fastelectra.convert.source import SourceError, load_source


def test_preset_module_has_the_hub_format(tiny_module):
    import tensorflow as tf

    obj = tf.saved_model.load(str(tiny_module))
    assert obj.vocab_file.asset_path.numpy().decode().endswith("vocab.txt")
    assert bool(obj.do_lower_case.numpy()) is True
    ids = tf.constant([[101, 2023, 102]], tf.int32)
    pooled, sequence = obj([ids, tf.ones_like(ids), tf.zeros_like(ids)], training=False)
    assert pooled.shape == (1, 64) and sequence.shape == (1, 3, 64)
    signature = obj.signatures["serving_default"]
    assert set(signature.structured_input_signature[1]) == {
        "input_word_ids",
        "input_mask",
        "segment_ids",
    }


def test_preset_module_loads_with_hub_keras_layer(tiny_module):
    import tensorflow as tf
    import tensorflow_hub as hub

    layer = hub.KerasLayer(str(tiny_module), trainable=False)
    ids = tf.constant([[101, 102]], tf.int32)
    pooled, sequence = layer([ids, tf.ones_like(ids), tf.zeros_like(ids)])
    assert pooled.shape == (1, 64) and sequence.shape == (1, 2, 64)


def test_load_source_infers_dimensions(tiny_source):
    d = tiny_source.dimensions
    assert (d.layers, d.hidden, d.heads, d.intermediate) == (2, 64, 4, 128)
    assert (d.vocab_size, d.max_positions, d.type_vocab_size) == (30522, 512, 2)
    assert tiny_source.convention == "legacy"
    assert tiny_source.do_lower_case is True
    assert tiny_source.vocab_file.read_text().splitlines()[101] == "[CLS]"


def test_tar_gz_module_gives_the_same_encoder(tiny_source):
    from fastelectra.convert.presets import preset_module

    archived = load_source(preset_module("tiny", tar_gz=True))
    assert archived.dimensions == tiny_source.dimensions
    ids = np.array([[101, 7592, 102]], np.int32)
    a = tiny_source.call(ids, np.ones_like(ids), np.zeros_like(ids))
    b = archived.call(ids, np.ones_like(ids), np.zeros_like(ids))
    np.testing.assert_allclose(a[1].numpy(), b[1].numpy(), atol=1e-5)


def test_inference_function_is_deterministic(tiny_source):
    """Never a training=True trace: dropout would make two calls differ."""
    import tensorflow as tf

    fn = tiny_source.inference_function()
    ids = tf.constant(np.full((2, 16), 2000, np.int32))
    one = fn(ids, tf.ones_like(ids), tf.zeros_like(ids))["sequence_output"].numpy()
    two = fn(ids, tf.ones_like(ids), tf.zeros_like(ids))["sequence_output"].numpy()
    np.testing.assert_array_equal(one, two)


@pytest.fixture(scope="module")
def dict_module(tmp_path_factory, tiny_module):
    """The later TF Hub BERT export: dict inputs with input_type_ids, dict outputs."""
    import tensorflow as tf
    import tf_keras
    from official.nlp.modeling import networks

    encoder = networks.BertEncoder(
        vocab_size=30522,
        hidden_size=32,
        num_layers=1,
        num_attention_heads=2,
        max_sequence_length=128,
        type_vocab_size=2,
        inner_dim=64,
        dict_outputs=True,
    )
    inputs = {
        name: tf_keras.layers.Input(shape=(None,), dtype=tf.int32, name=name)
        for name in ("input_word_ids", "input_mask", "input_type_ids")
    }
    outputs = encoder(inputs)
    model = tf_keras.Model(inputs, {k: outputs[k] for k in ("pooled_output", "sequence_output")})
    model.vocab_file = tf.saved_model.Asset(str(tiny_module / "assets" / "vocab.txt"))
    model.do_lower_case = tf.Variable(True, trainable=False)
    path = tmp_path_factory.mktemp("dict") / "module"
    tf.saved_model.save(model, str(path))
    return path


def test_dict_input_module(dict_module):
    src = load_source(dict_module)
    assert src.convention == "dict"
    assert (src.dimensions.layers, src.dimensions.hidden, src.dimensions.heads) == (1, 32, 2)
    assert src.dimensions.max_positions == 128


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        load_source(tmp_path / "nope")


def test_directory_without_saved_model(tmp_path):
    with pytest.raises(SourceError, match=r"no saved_model\.pb"):
        load_source(tmp_path)


def test_corrupt_tar_gz(tmp_path):
    bad = tmp_path / "module.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08 this is not gzip")
    with pytest.raises(SourceError, match=r"not a readable \.tar\.gz"):
        load_source(bad)


def test_savedmodel_that_is_not_an_encoder(tmp_path):
    import tensorflow as tf

    class Adder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return x + 1.0

    tf.saved_model.save(Adder(), str(tmp_path / "adder"))
    with pytest.raises(SourceError, match="lacks vocab_file, do_lower_case"):
        load_source(tmp_path / "adder")


def _keras_model_around_hub_layer(module, out, head: str | None = None):
    """The model card's use: `hub.KerasLayer(..., trainable=True)` inside a Keras model, a
    (simulated) fine-tuning step on its weights, then `model.save` as users do."""
    import tensorflow as tf
    import tensorflow_hub as hub
    import tf_keras

    names = ("input_word_ids", "input_mask", "segment_ids")
    inputs = [tf_keras.layers.Input(shape=(None,), dtype=tf.int32, name=n) for n in names]
    pooled, sequence = hub.KerasLayer(str(module), trainable=True)(inputs)
    outputs = [pooled, sequence] if head is None else tf_keras.layers.Dense(2, name=head)(pooled)
    model = tf_keras.Model(inputs, outputs)
    rng = np.random.default_rng(3)
    for var in model.trainable_variables:
        var.assign_add(rng.normal(0, 0.01, var.shape).astype(np.float32))
    model.save(str(out))
    return out


@pytest.mark.slow
def test_a_fine_tuned_module_saved_by_keras_converts(tmp_path):
    from fastelectra.convert.build import build
    from fastelectra.convert.presets import preset_module

    original = preset_module("tiny-2020")
    saved = _keras_model_around_hub_layer(original, tmp_path / "fine-tuned")
    src = load_source(saved)
    assert src.convention == "legacy" and src.do_lower_case is True
    assert src.vocab_file.read_text().splitlines()[101] == "[CLS]"  # found in the wrapped layer
    assert src.dimensions == load_source(original).dimensions
    texts = tmp_path / "texts.txt"
    texts.write_text("a fine-tuned encoder\nstill converts\tas a pair\n")
    result = build(saved, tmp_path / "bundle", verify_texts=texts, progress=None)
    assert result.verification["passed"]
    assert result.meta.fused_ops["Attention"] == 2
    # The fine-tuning step changed the weights: the bundle follows the saved model, not the
    # module it started from.
    ids = np.array([[101, 7592, 102]], np.int32)
    tuned = src.call(ids, np.ones_like(ids), np.zeros_like(ids))[0].numpy()
    base = load_source(original).call(ids, np.ones_like(ids), np.zeros_like(ids))[0].numpy()
    assert np.abs(tuned - base).max() > 1e-3


@pytest.mark.slow
def test_an_outer_model_with_other_outputs_is_named_in_the_error(tmp_path):
    from fastelectra.convert.presets import preset_module

    saved = _keras_model_around_hub_layer(
        preset_module("tiny-2020"), tmp_path / "classifier", head="logits"
    )
    with pytest.raises(SourceError, match=r"outputs are not an encoder's.*found output 0 \[1, 2\]"):
        load_source(saved)
