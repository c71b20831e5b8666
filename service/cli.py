"""`genrec-serve --bundle DIR [--host H] [--port P]`: the service under uvicorn.
`genrec-serve export --bundle DIR --out OUT`: the service's catalog and users' events as a dataset
(service/export.py; `genrec-serve export --help`).
`genrec-serve forget-catalog NAME`: deletes a catalog namespace an upgrade left behind
(service/upgrade.py).

Every other setting comes from the environment (see service/settings.py). A bad bundle or a
bad setting stops the start with one clear line on stderr and exit code 2. SIGTERM stops it
gracefully (in-flight requests and queued batches finish) with exit code 0; SIGHUP reloads the
bundle at GENREC_BUNDLE without downtime (service/reload.py).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from pydantic import ValidationError

from genrec.bundle import read_manifest, verify_bundle
from genrec.errors import BundleError
from genrec.registry import kinds


def _settings_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["export"]:
        from .export import main as export_main

        return export_main(argv[1:])
    if argv[:1] == ["forget-catalog"]:
        from .upgrade import forget_main

        return forget_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="genrec-serve", description="Serve a genrec bundle over HTTP.",
        epilog="genrec-serve export --help: write the catalog and the users' events as a dataset; "
               "genrec-serve forget-catalog --help: delete a catalog an upgrade left behind.")
    parser.add_argument("--bundle", help="bundle folder (default: $GENREC_BUNDLE)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)

    from .settings import Settings

    overrides = {"bundle": args.bundle} if args.bundle else {}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"genrec-serve: {_settings_error(exc)}", file=sys.stderr)
        return 2
    try:
        manifest = verify_bundle(settings.bundle) if settings.verify_bundle else read_manifest(settings.bundle)
        if manifest.get("kind") not in kinds():
            raise BundleError(f"the service serves {', '.join(kinds())} bundles; {settings.bundle} is "
                              f"{manifest.get('kind')!r}")
    except BundleError as exc:
        print(f"genrec-serve: bad bundle: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no weight-loading bars in a server's log

    import uvicorn

    from .app import create_app

    app = create_app(settings)
    previous = signal.signal(signal.SIGTERM, _stopped_on_request)
    # SIGHUP: reload the bundle at GENREC_BUNDLE (docs/operations.md, "Reload a bundle").
    previous_hup = signal.signal(signal.SIGHUP, lambda _signum, _frame: app.state.service.reload_on_signal())
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,
            timeout_graceful_shutdown=settings.shutdown_timeout_s or None,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGHUP, previous_hup)
    return 0


def _stopped_on_request(signum, frame) -> None:
    """SIGTERM is how orchestrators ask for a stop. Uvicorn drains the in-flight requests and
    runs the app's shutdown first, then raises the signal again with the handler it found,
    this one: the process ends with exit code 0 (a clean stop), not killed by the signal."""
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
