"""Helpers for the subprocess scripts of tests/test_user_env.py and tests/test_optional_extras.py.

Standard library only: those scripts import this module after hiding packages (pkg_resources, the optional
extras), so it must not import anything that could pull one in.
"""
import importlib
import pkgutil
import traceback


def fmt(exc: BaseException) -> str:
    """The last 3,000 characters of ``exc``'s traceback."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-3000:]


def import_submodules(package, failures: dict, report=fmt) -> int:
    """Import every module under ``package``; ``failures[name] = report(exc)`` for each that fails and for
    which ``report`` gives a text (None: not this check's business). Returns the number imported."""
    n = 0
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        try:
            importlib.import_module(info.name)
            n += 1
        except BaseException as e:  # noqa: BLE001
            text = report(e)
            if text:
                failures[info.name] = text
    return n
