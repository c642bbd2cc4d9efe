"""Parley LLM stage: streaming chat completion over gRPC (``parley.v1.Llm/Generate``).

Backends: ``llamacpp`` (xllamacpp in-process, CPU-friendly default with SmolLM2-135M) and ``openai``
(any OpenAI-compatible ``/chat/completions`` endpoint: vLLM, llama.cpp server, TGI, OpenAI).
"""
