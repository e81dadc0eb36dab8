"""`spct serve`: a reward server over the online engine (FastAPI + uvicorn). The contract: docs/serve.md.

    from spct.serve import Config, create_app, run
    run(grm, Config(k=4), host="127.0.0.1", port=8000)
"""

from spct.serve.app import create_app
from spct.serve.run import load, run
from spct.serve.work import Config

__all__ = ["Config", "create_app", "load", "run"]
