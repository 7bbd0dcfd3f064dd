"""The foreseeable failures of the libraries we call, translated into the project's one-line error, in one place.

Other people's files and the machine itself fail inside torch, safetensors, transformers and the OS, each in its own
words: a multi-line ``UnpicklingError`` whose advice (``weights_only=False``) is the one thing a user must not do
with a file they did not make, a ``SafetensorError`` about a header, a ``RuntimeError`` from torch's zip writer
when the disk fills up. :func:`explain` knows these and says, in one line, what happened and what to do;
:func:`translating` wraps a call that reads or writes a known place, so the line names it. An error that
:func:`explain` does not know is a bug of ours or a failure nobody foresaw: it keeps its traceback.

The entry point (:func:`instructgpt.infra.entrypoint.run_cli`) asks :func:`explain` too, for what escapes every
wrapped call (the disk filling up in the middle of a library's own write).
"""

from __future__ import annotations

import errno
import pickle
from collections.abc import Iterator
from contextlib import contextmanager

from instructgpt.infra.errors import InstructGPTError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
RESUME = "free some space and run the same command again: it resumes from what was saved"
# torch's zip writer reports a short write (a full disk) as a failed check, not as an OSError
TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "inline_container.cc", "file write failed", "unexpected pos")
CPU_OUT_OF_MEMORY = ("DefaultCPUAllocator: can't allocate memory", "not enough memory")


class LibraryError(InstructGPTError):
    """A foreseeable failure inside a library we call (a file it cannot load, a full disk), in one line."""


def _type_name(err: BaseException) -> str:
    return f"{type(err).__module__}.{type(err).__name__}"


def _unsafe_pickle(err: BaseException) -> str:
    detail = str(err.__cause__ or err.__context__ or "").strip().splitlines()
    blocked = f" ({detail[0]})" if detail else ""
    return (
        "holds its weights as a pickle that is not plain tensors, so it was refused without running it: unpickling "
        f"such a file can execute any code it carries{blocked}. Convert it to safetensors on a machine where you "
        "trust it (load it there and save_pretrained(..., safe_serialization=True)) and point to that copy"
    )


def _oserror(err: OSError) -> str | None:
    where = f" ({err.filename})" if err.filename else ""
    if err.errno in DISK_FULL_ERRNOS:
        return f"no space left on the device{where}; {RESUME}"
    if err.errno == errno.EROFS:
        return f"the file system is read-only{where}; choose an output_dir on a writable disk"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}; choose a path this user may write, or fix its permissions"
    if err.errno == errno.ENOMEM:
        return "out of memory; use a smaller batch (per_device_train_batch_size) or a smaller model"
    if "is not a valid JSON file" in str(err):  # transformers: a broken config.json or tokenizer file
        return f"{err} Copy or download it again"
    return None


def explain(err: BaseException) -> str | None:
    """What a foreseeable library error means and what to do, in one line; None for an error nobody foresaw."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError):
        return _unsafe_pickle(err)
    if _type_name(err) == "safetensors._safetensors_rust.SafetensorError":
        if "os error 28" in text or "No space left" in text:
            return f"no space left on the device while writing a safetensors file; {RESUME}"
        return f"is not a whole safetensors file ({text}): it was cut off or corrupted; copy or download it again"
    if isinstance(err, ValueError) and "contains custom code which must be executed" in text:
        return (
            "asks to run code shipped in its own files (`auto_map` in config.json), and nothing of it was run; if you "
            "have read that code and trust it, set `trust_remote_code: true` in the recipe"
        )
    if isinstance(err, OSError):
        return _oserror(err)
    if isinstance(err, RuntimeError) and any(marker in text for marker in TORCH_WRITE_FAILURES):
        return f"a file could not be written whole (torch: {text.splitlines()[0]}): the disk is probably full; {RESUME}"
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and any(m in text for m in CPU_OUT_OF_MEMORY)):
        return "out of memory; use a smaller batch (per_device_train_batch_size) or a smaller model"
    if _type_name(err) == "torch.OutOfMemoryError":
        return f"out of GPU memory ({text.splitlines()[0]}); use a smaller batch, LoRA or a smaller model"
    return None


@contextmanager
def translating(place: str) -> Iterator[None]:
    """Inside, a foreseeable library error becomes a :class:`LibraryError` that starts with ``place`` (the file, or
    the recipe key and the path); our own errors and unforeseen ones pass through unchanged."""
    try:
        yield
    except InstructGPTError:
        raise
    except Exception as err:
        text = explain(err)
        if text is None:
            raise
        raise LibraryError(f"{place}: {text}") from err
