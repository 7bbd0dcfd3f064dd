"""Sampling with vLLM (the optional ``[vllm]`` extra): the same samples as :mod:`instructgpt.sampling`, faster.

    pip install -e '.[vllm]'          # then `use_vllm: true` in a collect, eval or PPO recipe

:func:`generate_samples` takes the arguments of :func:`instructgpt.sampling.generate_samples` and returns the same
``samples[prompt_index][sample_index]`` of :class:`~instructgpt.sampling.Sample` (text, the token ids vLLM drew,
whether the response reached EOS, the prompt ids), so collection ranks and evaluation scores exactly the tokens
vLLM sampled. What stays the same as the HF path:

- the prompt ids: :func:`~instructgpt.sampling.encode_prompts` (the chat template, no extra BOS, a prompt that would
  not leave room for ``max_new_tokens`` in the context keeps its end), handed to vLLM as token ids, never text;
- the sampling settings: ``temperature`` (0: greedy), ``top_k`` (0: no limit), ``top_p``, ``max_new_tokens``, and
  the stop at any EOS of the tokenizer or the model's generation config; the EOS is not part of the text;
- the text: decoded by the same tokenizer with ``skip_special_tokens`` and stripped.

Seeds are per request (vLLM's ``SamplingParams.seed``): the sample ``s`` of prompt ``p`` draws from a generator
seeded with :func:`request_seed` ``(seed, p, s)``. A collection is then reproducible whatever vLLM batches
together, and a resumed or re-split collection samples a prompt exactly as an uninterrupted one. (The draws are
vLLM's own, so the same seed gives other samples than the HF path; greedy decoding gives the same tokens.)

The engine runs in the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, and under ``accelerate launch``
vLLM's ``external_launcher``, as TRL's GRPO colocate mode), so PPO can load new weights into it directly; vLLM may
still spawn helper processes, so a script that makes an engine must do so under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

from instructgpt.data.formats import Prompt
from instructgpt.infra.errors import InstructGPTError
from instructgpt.modeling import model_context_length
from instructgpt.modeling.lora import is_lora
from instructgpt.sampling import Sample, cut_at_eos, encode_prompts

VLLM_EXTRA = "pip install -e '.[vllm]'"


class VLLMUnavailable(InstructGPTError):
    """``use_vllm: true`` where vLLM is not installed (or does not import)."""


def require_vllm(source: str = "recipe", key: str = "use_vllm") -> Any:
    """The ``vllm`` module, or a one-line error that names the extra to install."""
    try:
        import vllm
    except ImportError as err:
        missing = getattr(err, "name", None)
        if missing is None or missing == "vllm" or missing.startswith("vllm."):
            raise VLLMUnavailable(
                f"{source}: `{key}: true` needs vLLM, which is not installed; install the extra with "
                f"`{VLLM_EXTRA}` (or set `{key}: false`)"
            ) from None
        raise VLLMUnavailable(
            f"{source}: `{key}: true`: vLLM is installed but does not import ({type(err).__name__}: {err}); "
            f"reinstall the extra with `{VLLM_EXTRA}`"
        ) from None
    return vllm


def request_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """A 31-bit seed for one request, a hash of ``(seed, prompt, sample)``: distinct requests get unrelated streams
    (``seed + i`` would make neighbouring collections share most of their streams)."""
    digest = hashlib.blake2b(f"{seed}:{prompt_index}:{sample_index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def sampling_params(
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    stop_token_ids: Sequence[int],
    seed: int | None,
    logprobs: bool = False,
) -> Any:
    """vLLM's ``SamplingParams`` for one request with our settings' meaning.

    ``temperature <= 0`` is greedy (vLLM's own convention for 0); ``top_k <= 0`` means no limit (vLLM: -1 or 0);
    with no stop tokens the response runs to ``max_new_tokens`` (``ignore_eos``). ``logprobs`` asks for the
    sampled token's log-probability after temperature (``logprobs=0`` with the engine's ``processed_logprobs``).
    """
    from vllm import SamplingParams

    stop = sorted(set(stop_token_ids))
    return SamplingParams(
        n=1,
        max_tokens=max_new_tokens,
        temperature=max(temperature, 0.0),
        top_k=top_k if top_k > 0 else -1,
        top_p=top_p if temperature > 0 else 1.0,
        seed=seed if temperature > 0 else None,
        stop_token_ids=stop,
        ignore_eos=not stop,
        skip_special_tokens=True,
        detokenize=False,  # we decode with the tokenizer the HF path uses
        logprobs=0 if logprobs else None,
    )


def in_process_environment(num_processes: int = 1) -> None:
    """Make vLLM run its engine in this process (so its model is reachable for weight pushes) and keep quiet.

    With several processes (``accelerate launch``), each process holds its own engine over its own share of the
    prompts, as TRL's colocate mode: vLLM's ``external_launcher`` reads RANK / WORLD_SIZE like torchrun.
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")


def make_engine(
    model_path: str,
    *,
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.5,
    max_num_seqs: int = 256,
    seed: int = 0,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    enable_sleep_mode: bool = False,
    cpu_kv_cache_gib: float | None = None,
    distributed: bool = False,
    source: str = "recipe",
) -> Any:
    """A vLLM ``LLM`` over the model directory ``model_path`` (a plain model: merge a LoRA adapter first).

    ``gpu_memory_utilization`` is the share of GPU memory vLLM may take (weights + KV cache; colocated with
    training, leave the rest to the trainer). On CPU it has no effect; vLLM-CPU sizes its KV cache from
    ``VLLM_CPU_KVCACHE_SPACE`` (GiB), which ``cpu_kv_cache_gib`` sets when given. ``distributed`` selects vLLM's
    ``external_launcher`` (one engine per ``accelerate`` process, in that process).
    """
    vllm = require_vllm(source)
    import torch

    in_process_environment()
    if cpu_kv_cache_gib is not None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kv_cache_gib)
    elif not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    kwargs: dict[str, Any] = dict(
        model=str(model_path),
        tokenizer=str(model_path),
        skip_tokenizer_init=False,
        seed=seed,
        max_num_seqs=max_num_seqs,
        trust_remote_code=trust_remote_code,
        enable_prefix_caching=False,  # weights change under it in PPO; and every prompt here is sampled once per batch
        logprobs_mode="processed_logprobs",
    )
    if torch.cuda.is_available():
        kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep_mode)
    else:
        # vLLM-CPU 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prompt is split over
        # two steps (chunked prefill rewinds the request's generator, which CPU generators cannot do); whole
        # prompts only, and a step budget that holds the longest one
        kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(8192, max_model_len or 0))
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    kwargs["dtype"] = dtype if dtype not in (None, "auto") else saved_dtype(model_path, trust_remote_code)
    if distributed:
        kwargs["distributed_executor_backend"] = "external_launcher"
    try:
        return vllm.LLM(**kwargs)
    except (ValueError, TypeError) as err:  # an architecture or setting vLLM does not support
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InstructGPTError(f"{source}: vLLM cannot serve {model_path}: {first}") from None


def saved_dtype(model_path: str, trust_remote_code: bool = False) -> str:
    """The dtype the weights were saved in (float32 when the config does not say). vLLM's ``auto`` would run a
    float32 model in bfloat16 on CPU, and its samples would then differ from the trainer's model."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else "float32"


def engine_worker(llm: Any) -> Any:
    """vLLM's worker in this process (needs :func:`in_process_environment`)."""
    worker = llm.llm_engine.model_executor.driver_worker
    return getattr(worker, "worker", worker)  # a WorkerWrapperBase holds the worker


def engine_model(llm: Any) -> Any:
    """The ``nn.Module`` vLLM runs, in this process."""
    worker = engine_worker(llm)
    return worker.model_runner.model if hasattr(worker.model_runner, "model") else worker.model_runner.get_model()


def load_weights(llm: Any, named_tensors: list[tuple[str, Any]]) -> None:
    """Copy ``(hf_name, tensor)`` pairs into the engine's model and drop any prefix cached with the old weights.

    vLLM maps the transformers names, GPT-2's Conv1D layout, fused QKV and tied embeddings itself. vLLM >= 0.15
    processes weights after loading (e.g. repacked for the CPU's GEMM kernels, dropping their loaders), so new
    weights go through the worker's in-place ``reload_weights`` (which redoes that processing); older vLLM (as
    TRL's colocate mode) calls the model's ``load_weights`` directly.
    """
    worker = engine_worker(llm)
    if hasattr(worker, "reload_weights"):
        llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": iter(named_tensors), "is_checkpoint_format": True}
        )
        repack_cpu_embeddings(engine_model(llm))
    else:
        engine_model(llm).load_weights(named_tensors)
    llm.reset_prefix_cache()


def repack_cpu_embeddings(model: Any) -> int:
    """vLLM-CPU: rebuild the GEMM kernel of every layer that keeps its weight beside a packed copy (the embedding,
    and with it a tied LM head); returns how many were rebuilt.

    vLLM's in-place reload redoes the processing of each layer it loads, but a tied LM head shares the input
    embedding's weight and keeps the packed copy made from the *old* one (vLLM documents this limit of its
    layerwise reload), so logits would come from the SFT head. Measured on the tiny GPT-2 without this: a 2.6 nat
    log-prob gap after changing only the embedding; with it, 6e-6. Layers whose weight was moved into the packed
    kernel (``weight`` empty) were rebuilt by the reload itself and are left alone. No-op off CPU.
    """
    try:
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
        from vllm.platforms import current_platform
    except ImportError:
        return 0
    if not current_platform.is_cpu():
        return 0
    rebuilt = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and weight is not None and weight.ndim == 2 and weight.numel() > 0:
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
            rebuilt += 1
    return rebuilt


def hf_weights(policy: Any) -> list[tuple[str, Any]]:
    """``(name, tensor)`` of a causal LM under its transformers names, what vLLM's ``load_weights`` reads.

    A LoRA (peft) policy is given merged: every adapted layer's weight is ``W + delta`` with peft's own
    ``get_delta_weight`` (``(alpha / r) B A``, transposed for GPT-2's Conv1D), computed out of place. The model is
    never merged and unmerged in place, which would leave ``(W + d) - d`` in the base weights, the LoRA policy's
    KL reference, a rounding error that would build up over the run. peft's names map back to the model's
    (``base_model.model.`` and ``.base_layer`` dropped) and the adapter matrices are left out.
    """
    import torch

    with torch.no_grad():
        if not is_lora(policy):
            return [(name, param.detach()) for name, param in policy.named_parameters()]
        deltas: dict[str, Any] = {}
        for module_name, module in policy.named_modules():
            lora_a = getattr(module, "lora_A", None)
            if lora_a is None or not hasattr(module, "base_layer") or getattr(module, "disable_adapters", False):
                continue
            if getattr(module, "merged", False):
                continue  # already folded into the base weight
            adapters = [a for a in module.active_adapters if a in lora_a]
            if adapters:
                deltas[f"{module_name}.base_layer.weight"] = sum(module.get_delta_weight(a) for a in adapters)
        out = []
        for name, param in policy.named_parameters():
            if "lora_" in name or "original_module" in name:
                continue
            tensor = param.detach() + deltas[name] if name in deltas else param.detach()
            name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            out.append((name.replace(".modules_to_save.default.", "."), tensor))
        return out


def push_policy(llm: Any, policy: Any) -> int:
    """Load the policy's current weights into the engine; returns how many tensors were copied.

    LoRA: the merged weights are pushed (:func:`hf_weights`), as TRL's GRPO colocate mode does, rather than the
    adapter through vLLM's LoRA support: vLLM then runs a plain model at the base model's speed, with no adapter
    kernels and no adapter files written and registered at every update.
    """
    weights = hf_weights(policy)
    load_weights(llm, weights)
    return len(weights)


def close_engine(llm: Any) -> None:
    """Free an engine's memory before the next one is made (one model at a time in ``instructgpt eval``)."""
    import gc

    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001 - an engine that is already down has nothing to free
        pass
    del llm
    gc.collect()


def eos_token_ids(tokenizer: Any, model_path: str | None = None) -> set[int]:
    """The tokens that end a response: the tokenizer's EOS and any in the model's generation config (as
    :func:`instructgpt.sampling.generate_samples` stops)."""
    ids = {tokenizer.eos_token_id}
    if model_path is not None:
        try:
            from transformers import GenerationConfig

            configured = GenerationConfig.from_pretrained(model_path).eos_token_id
        except OSError:
            configured = None
        if isinstance(configured, int):
            ids.add(configured)
        elif isinstance(configured, (list, tuple)):
            ids.update(configured)
    return {i for i in ids if i is not None}


def to_sample(
    token_ids: Sequence[int], prompt_ids: list[int], tokenizer: Any, eos_ids: set[int], stop_reason: Any = None
) -> Sample:
    """One vLLM completion as a :class:`~instructgpt.sampling.Sample`: the tokens before the first EOS, and the EOS.

    vLLM keeps a stop token in ``token_ids``; where it reports the stop only in ``stop_reason`` (an int token
    id), that token is the EOS.
    """
    kept, eos = cut_at_eos(list(token_ids), eos_ids)
    if eos is None and isinstance(stop_reason, int) and stop_reason in eos_ids:
        eos = stop_reason
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    return Sample(text=text, token_ids=kept, finished=eos is not None, eos_token_id=eos, prompt_ids=prompt_ids)


def generate_samples(
    llm: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    num_samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    context_length: int | None = None,
    eos_ids: set[int] | None = None,
    progress: bool = False,
) -> list[list[Sample]]:
    """:func:`instructgpt.sampling.generate_samples` with vLLM: ``samples[prompt_index][sample_index]``.

    One request per ``(prompt, sample)`` with its own seed (:func:`request_seed`; ``seed=None`` uses 0), all
    handed to ``LLM.generate`` at once: vLLM batches them itself (continuous batching), so there is no
    ``batch_size``. ``context_length`` (the model's, e.g. GPT-2's ``n_positions``) truncates prompts as the HF
    path does.
    """
    from vllm.inputs import TokensPrompt

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not prompts:
        return []
    max_prompt_tokens = None if context_length is None else max(1, context_length - max_new_tokens)
    encoded = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    eos_ids = eos_ids if eos_ids is not None else eos_token_ids(tokenizer)
    base = 0 if seed is None else seed
    jobs = [(p, s) for p in range(len(prompts)) for s in range(num_samples)]
    requests = [TokensPrompt(prompt_token_ids=encoded[p]) for p, _ in jobs]
    params = [
        sampling_params(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            stop_token_ids=sorted(eos_ids),
            seed=request_seed(base, p, s),
        )
        for p, s in jobs
    ]
    outputs = llm.generate(requests, params, use_tqdm=progress)
    results: list[list[Sample | None]] = [[None] * num_samples for _ in prompts]
    for (p, s), output in zip(jobs, outputs):
        completion = output.outputs[0]
        results[p][s] = to_sample(completion.token_ids, encoded[p], tokenizer, eos_ids, completion.stop_reason)
    return results  # type: ignore[return-value]


class VLLMSampler:
    """An engine over one policy directory, with the HF sampler's call signature (``batch_size`` is ignored:
    vLLM batches continuously). Collection and evaluation build one per model they sample from."""

    def __init__(
        self,
        model_path: str,
        tokenizer: Any,
        *,
        gpu_memory_utilization: float = 0.5,
        cpu_kv_cache_gib: float | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        seed: int = 0,
        distributed: bool = False,
        source: str = "recipe",
    ):
        from transformers import AutoConfig

        self.tokenizer = tokenizer
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.context_length = model_context_length(config)
        self.eos_ids = eos_token_ids(tokenizer, model_path)
        self.llm = make_engine(
            model_path,
            max_model_len=self.context_length,
            gpu_memory_utilization=gpu_memory_utilization,
            cpu_kv_cache_gib=cpu_kv_cache_gib,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            seed=seed,
            distributed=distributed,
            source=source,
        )

    def generate_samples(
        self,
        prompts: Sequence[Prompt],
        num_samples: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[list[Sample]]:
        return generate_samples(
            self.llm,
            self.tokenizer,
            prompts,
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            context_length=self.context_length,
            eos_ids=self.eos_ids,
            progress=progress,
        )

    def generate_responses(self, prompts: Sequence[Prompt], **kwargs: Any) -> list[list[str]]:
        return [[s.text for s in row] for row in self.generate_samples(prompts, **kwargs)]

    def close(self) -> None:
        close_engine(self.llm)
        self.llm = None
