"""`EncoderSession`: one onnxruntime session for a bundle's model, checked against its metadata.

On a GPU the inputs are bound with IO binding: onnxruntime then copies each input to the device
once, writes outputs into device memory it allocates itself and copies them back once, instead of
staging every tensor through extra host buffers.

On the CPU provider the session loads `cpu_view`'s rewrite of the model rather than the file
as it is: weights are read in place, and SkipLayerNormalization runs as Add + LayerNormalization.

`run` is thread-safe and runs one call at a time: threads sharing a session (the server's, Ray's,
a user's thread pool) queue for it. A run already uses every core it is given, so concurrent runs
only contend for them, and each would grow onnxruntime's memory arena by its own peak, which
the arena keeps for the life of the process (8 threads on one MiniLM Encoder: 4.8x the memory
of one). With the lock, memory is one run's whatever the number of threads (tests/test_runtime.py);
and on the CPU the arena shrinks back after each run, so a long batch does not keep its peak.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fastelectra.bundle import INPUT_NAMES, OUTPUT_NAMES, BundleError
from fastelectra.runtime.cpu_view import EXTERNAL_FOLDER_KEY, SKIP_LAYERNORM_FUSION, cpu_view
from fastelectra.runtime.protowire import WireError
from fastelectra.runtime.providers import (
    GPU_PROVIDERS,
    ExecutionPlan,
    external_stacklevel,
    plan_execution,
)

ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"
_ORT_TYPES = {"int32": "tensor(int32)", "int64": "tensor(int64)"}


class EncoderSession:
    """Runs ``(input_word_ids, input_mask, segment_ids) -> (pooled_output, sequence_output)``."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        plan: ExecutionPlan | None = None,
        *,
        inputs: Sequence[str] = INPUT_NAMES,
        outputs: Sequence[str] = OUTPUT_NAMES,
        input_dtype: str = "int32",
    ) -> None:
        self.model_path = Path(model_path)
        self.plan = plan if plan is not None else plan_execution()
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        if input_dtype not in _ORT_TYPES:
            raise BundleError(f"unsupported input dtype {input_dtype!r} (expected int32 or int64)")
        self.input_dtype = np.dtype(input_dtype)
        if not self.model_path.is_file():
            raise BundleError(f"{self.model_path}: model file is missing")
        for directory in self.plan.cache_dirs:
            Path(directory).mkdir(parents=True, exist_ok=True)
        options = self.plan.session_options()
        model: str | bytes = str(self.model_path)
        disabled: list[str] = []
        # SkipLayerNormalization nodes this session runs as Add + LayerNormalization (CPU).
        self.split_skip_layernorms = 0
        if self.plan.device == "cpu":
            try:
                view = cpu_view(self.model_path, self.plan.split_skip_layernorm)
            except (WireError, UnicodeDecodeError) as e:
                raise BundleError(
                    f"{self.model_path}: not a readable ONNX model (truncated or damaged?): {e}"
                ) from e
            model = view.model
            options.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(view.folder))
            self.split_skip_layernorms = view.split_skip_layernorms
            if self.plan.split_skip_layernorm:
                disabled.append(SKIP_LAYERNORM_FUSION)
        try:
            self._session = ort.InferenceSession(
                model,
                sess_options=options,
                providers=list(self.plan.providers),
                provider_options=[dict(o) for o in self.plan.provider_options],
                disabled_optimizers=disabled,
            )
        except Exception as e:  # onnxruntime's errors share no base class but Exception
            raise BundleError(
                f"{self.model_path}: onnxruntime cannot load this model "
                f"(truncated, damaged or not an ONNX encoder): {type(e).__name__}: {e}"
            ) from e
        self._check_io(input_dtype)
        active = self._session.get_providers()
        # onnxruntime-gpu logs and falls back to CPU when CUDA/TensorRT fail to initialise
        # (missing libraries, no device): surface that, and do not bind to a device we lack.
        if active[0] != self.plan.providers[0]:
            warnings.warn(
                f"{self.plan.providers[0]} failed to initialise; onnxruntime is using "
                f"{', '.join(active)} (see onnxruntime's log above for why)",
                RuntimeWarning,
                stacklevel=external_stacklevel(),
            )
        self.providers = tuple(active)
        self.device = "cuda" if active[0] in GPU_PROVIDERS else "cpu"
        self.device_id = self.plan.device_id
        self._one_run_at_a_time = threading.Lock()
        self._run_options = ort.RunOptions()
        if self.device == "cpu":
            # Hand the arena's growth back after each run: a long batch otherwise keeps its
            # activations' memory for the life of the process (MiniLM, 128 texts of 500 tokens
            # in 4096-token steps: 437 MB resident after, 204 with this, 189 idle), at no cost
            # to short runs (benchmarks/results/2026-12-05-xeon-amx/fairness-*.json).
            self._run_options.add_run_config_entry(ARENA_SHRINKAGE, "cpu:0")

    def _check_io(self, input_dtype: str) -> None:
        model_inputs = {i.name: i.type for i in self._session.get_inputs()}
        model_outputs = {o.name for o in self._session.get_outputs()}
        if set(model_inputs) != set(self.inputs) or not set(self.outputs) <= model_outputs:
            raise BundleError(
                f"{self.model_path}: model IO does not match the bundle metadata: inputs "
                f"{sorted(model_inputs)} (expected {sorted(self.inputs)}), outputs "
                f"{sorted(model_outputs)} (expected {sorted(self.outputs)})"
            )
        wrong = {n: t for n, t in model_inputs.items() if t != _ORT_TYPES[input_dtype]}
        if wrong:
            raise BundleError(
                f"{self.model_path}: inputs {wrong} do not have the bundle's dtype {input_dtype}"
            )

    def run(
        self, input_word_ids: np.ndarray, input_mask: np.ndarray, segment_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run one batch; returns ``(pooled [batch, hidden], sequence [batch, seq, hidden])``."""
        arrays = [
            np.ascontiguousarray(x, dtype=self.input_dtype)
            for x in (input_word_ids, input_mask, segment_ids)
        ]
        with self._one_run_at_a_time:
            if self.device == "cuda":
                pooled, sequence = self._run_bound(arrays, "cuda")
            else:
                pooled, sequence = self._session.run(
                    list(self.outputs),
                    dict(zip(self.inputs, arrays, strict=True)),
                    self._run_options,
                )
        return pooled, sequence

    def end_profiling(self) -> Path:
        """The trace of onnxruntime's profiler (a plan with `enable_profiling`); it stops."""
        return Path(self._session.end_profiling())

    def _run_bound(self, arrays: list[np.ndarray], device: str) -> list[np.ndarray]:
        binding = self._session.io_binding()  # per call: bindings are not shareable across threads
        # Hold the device copies until the run is over.
        values = [ort.OrtValue.ortvalue_from_numpy(a, device, self.device_id) for a in arrays]
        for name, value in zip(self.inputs, values, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name in self.outputs:
            binding.bind_output(name, device, self.device_id)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
