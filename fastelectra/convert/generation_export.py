"""Child process: write a TF Hub module with one historical TF Models release's own export code.

Run as ``python -m fastelectra.convert.generation_export SPEC.json`` by `generations.py`, with
the release's unpacked wheel first on `sys.path` (several releases cannot share one process:
they are all the package `official`). The spec names the release's exporter, the encoder
dimensions, a seed, the vocab file and the destination.

The release's code builds the encoder, a checkpoint of its (random, seeded) weights is written,
and the release's own export function restores it and saves the module, exactly as TF Hub's
modules were made. Run-time shims, none of which changes the graph (docs/generations.md):

* ``TF_USE_LEGACY_KERAS=1`` (set by the parent): releases before 2.16 call ``tf.keras``, which
  is Keras 3 in TensorFlow 2.16+; this makes it ``tf_keras``, the Keras 2 those releases
  were written for.
* ``tf.keras.mixed_precision.experimental`` (removed in TF 2.9's Keras; 2020 releases read
  the global policy through it) is given back as an alias of ``tf.keras.mixed_precision``.
  The policy is float32 throughout, as it was for the TF Hub exports.
* ``tensorflow.python.keras.engine.network`` (gone since TF 2.6; tf-models-official 2.2
  subclasses its ``Network``, the functional base of ``tf.keras.Model``) is provided with
  ``Network = tf.keras.Model``: the same functional graph, traced by the same layers.
* ``tensorflow_addons`` (end of life, no wheel for this TensorFlow): 2.11-2.12 import its
  ``utils.types`` for the type hints of the `mish` activation, which BERT encoders never use.
  A stand-in module answers every name with ``typing.Any``.
* Python 3.11 refuses dataclass instances as field defaults (`encoders.EncoderConfig` of
  2.5-2.10 has ``albert: AlbertEncoderConfig = AlbertEncoderConfig()``); such a default becomes
  ``default_factory`` returning a copy of it. Configs only, no graph.

This module imports nothing from fastelectra: the parent's packages must not load TF Models
2.20 into a process meant for another release.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import os
import shutil
import sys
import tempfile
import types
import typing


def _bert_config(configs_module, spec: dict):
    return configs_module.BertConfig(
        vocab_size=spec["vocab_size"],
        hidden_size=spec["hidden"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        intermediate_size=spec["intermediate"],
        hidden_act=spec.get("hidden_act", "gelu"),
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=spec["max_positions"],
        type_vocab_size=spec["type_vocab_size"],
        initializer_range=0.02,
    )


def _export_bert_tfhub(spec: dict, tmp: str) -> None:
    """tf-models-official 2.2-2.4: `official/nlp/bert/export_tfhub.py` (list IO)."""
    import tensorflow as tf
    from official.nlp.bert import configs, export_tfhub

    cfg = _bert_config(configs, spec)
    _, encoder = export_tfhub.create_bert_model(cfg)
    _randomize(encoder, spec["seed"])
    checkpoint = tf.train.Checkpoint(model=encoder).save(os.path.join(tmp, "ckpt"))
    vocab_file = spec["vocab_file"]
    if "do_lower_case" in inspect.signature(export_tfhub.export_bert_tfhub).parameters:
        export_tfhub.export_bert_tfhub(
            cfg, checkpoint, spec["out"], vocab_file, spec["do_lower_case"]
        )
    else:
        # 2.2 takes do_lower_case from the vocab file's name ("uncased" in it): name it so.
        named = os.path.join(tmp, "uncased_vocab.txt" if spec["do_lower_case"] else "vocab.txt")
        shutil.copyfile(vocab_file, named)
        export_tfhub.export_bert_tfhub(cfg, checkpoint, spec["out"], named)


def _export_tools_lib(spec: dict, tmp: str) -> None:
    """tf-models-official 2.5+: `official/nlp/tools/export_tfhub_lib.py` (dict IO)."""
    import tensorflow as tf
    from official.nlp.tools import export_tfhub_lib

    try:
        from official.legacy.bert import configs
    except ImportError:  # before 2.9 the legacy BERT code lived in official/nlp/bert
        from official.nlp.bert import configs

    cfg = _bert_config(configs, spec)
    encoder = export_tfhub_lib.get_bert_encoder(cfg)
    _randomize(encoder, spec["seed"])
    checkpoint = tf.train.Checkpoint(encoder=encoder).save(os.path.join(tmp, "ckpt"))
    export_tfhub_lib.export_model(
        spec["out"],
        bert_config=cfg,
        model_checkpoint_path=checkpoint,
        with_mlm=False,
        vocab_file=spec["vocab_file"],
        do_lower_case=spec["do_lower_case"],
    )


def _randomize(encoder, seed: int) -> None:
    """Distinct random weights for every variable before the checkpoint is written.

    Under tf_keras an unseeded initializer *instance* returns the same values at every call,
    and these releases share one TruncatedNormal across layers: Q, K and V of every layer
    would be equal, and a fusion that swapped them would still verify. Kernels, biases and
    embeddings ~ N(0, 0.02); LayerNorm gamma ~ 1 + N(0, 0.1), beta ~ N(0, 0.02).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    for var in encoder.weights:
        shape = tuple(var.shape)
        dtype = var.dtype.as_numpy_dtype
        if var.name.split(":")[0].endswith("gamma"):
            value = 1.0 + rng.normal(0.0, 0.1, shape)
        else:
            value = rng.normal(0.0, 0.02, shape)
        var.assign(value.astype(dtype))


EXPORTERS = {"bert.export_tfhub": _export_bert_tfhub, "tools.export_tfhub_lib": _export_tools_lib}


def _install_shims() -> None:
    """The run-time shims of the module docstring; none changes the graph."""
    import tensorflow as tf

    mp = tf.keras.mixed_precision  # tf_keras' v2 API module under TF_USE_LEGACY_KERAS
    if not hasattr(mp, "experimental"):
        mp.experimental = types.SimpleNamespace(
            global_policy=mp.global_policy, set_policy=mp.set_global_policy, Policy=mp.Policy
        )

    network = types.ModuleType("tensorflow.python.keras.engine.network")
    network.Network = tf.keras.Model
    sys.modules.setdefault(network.__name__, network)

    try:
        import tensorflow_addons  # noqa: F401
    except ImportError:
        addons = types.ModuleType("tensorflow_addons")
        addons_utils = types.ModuleType("tensorflow_addons.utils")
        addons_types = types.ModuleType("tensorflow_addons.utils.types")
        addons_types.__getattr__ = lambda name: typing.Any
        addons.utils, addons_utils.types = addons_utils, addons_types
        for module in (addons, addons_utils, addons_types):
            sys.modules[module.__name__] = module

    get_field = dataclasses._get_field

    def lenient_get_field(cls, name, *args, **kwargs):
        default = cls.__dict__.get(name, dataclasses.MISSING)
        if (
            dataclasses.is_dataclass(default)
            and not isinstance(default, type)
            and type(default).__hash__ is None
        ):
            setattr(
                cls, name, dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d))
            )
        return get_field(cls, name, *args, **kwargs)

    dataclasses._get_field = lenient_get_field


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    import tf_keras

    _install_shims()
    tf_keras.utils.set_random_seed(spec.get("seed", 0))
    with tempfile.TemporaryDirectory() as tmp:
        EXPORTERS[spec["exporter"]](spec, tmp)
    import official

    print(json.dumps({"official": os.path.dirname(official.__file__)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
