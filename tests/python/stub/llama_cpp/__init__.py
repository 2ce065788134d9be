"""A stand-in for llama-cpp-python, which SteadyText's SDK imports unconditionally
(steadytext/core/structured.py) but never calls when a daemon answers. Should the SDK fall back to
in-process generation, these classes fail loudly instead of loading a model."""


class Llama:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("llama_cpp stub: the SDK fell back to in-process llama.cpp")


class LlamaGrammar:
    @classmethod
    def from_string(cls, *args, **kwargs):
        raise RuntimeError("llama_cpp stub: the SDK fell back to in-process llama.cpp")
