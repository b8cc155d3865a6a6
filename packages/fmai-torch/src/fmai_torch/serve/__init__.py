"""`fmai serve`: finite memory behind an OpenAI-compatible HTTP API, with a durable store.

Install with `pip install 'fmai-torch[serve]'`. The modules, one concept each:

- [`app`][fmai_torch.serve.app]: the Starlette routes (chat completions, conversations,
  models, health, metrics);
- [`sessions`][fmai_torch.serve.sessions]: one `FiniteMemoryLLM` per conversation, turns
  that take turns, history reconciliation and forks;
- [`store`][fmai_torch.serve.store]: the SQLAlchemy store (SQLite or PostgreSQL), one
  transaction per turn, locks across processes, the schema version;
- [`auth`][fmai_torch.serve.auth]: API keys (kept as digests) and conversation owners;
- [`protocol`][fmai_torch.serve.protocol]: the OpenAI wire format and error shape;
- [`server`][fmai_torch.serve.server]: options, the backend, uvicorn.

Nothing here imports torch unless the local model is served (`fmai serve` without
`--upstream`), so a server in front of a hosted or self-hosted engine needs no torch.

Example:
    ```python
    from openai import OpenAI

    client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused")
    r = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Hi, I'm Ada."}],
        extra_headers={"X-Session-ID": "ada"},
    )
    ```
"""
