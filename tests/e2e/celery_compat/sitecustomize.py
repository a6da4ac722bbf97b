"""Stopgap for the Celery e2e deployment only (on its processes' PYTHONPATH): the locked pair
apache-airflow-providers-celery 3.26.0 + celery 5.7.0 (Python 3.11+) does not import —
``celery_executor_utils`` does ``from celery.backends.database import retry``, which celery 5.7 removed
(``ImportError: cannot import name 'retry' from 'celery.backends.database'``), so the scheduler and every
worker die at start. This puts back celery 5.6's decorator (retry a DB call on a database error, 3 tries)
when, and only when, it is missing. Pinning ``celery<5.7`` in the lock makes this file inert; delete it then.
"""

from __future__ import annotations

import functools
import logging
import sys

try:
    import celery.backends.database as _database
except Exception:  # no celery here: nothing to fix
    _database = None

if _database is not None and not hasattr(_database, "retry"):
    from sqlalchemy.exc import DatabaseError, InvalidRequestError
    from sqlalchemy.orm.exc import StaleDataError

    _log = logging.getLogger("celery.backends.database")

    def retry(fun):  # celery 5.6.3's celery.backends.database.retry
        @functools.wraps(fun)
        def _inner(*args, **kwargs):
            max_retries = kwargs.pop("max_retries", 3)
            for retries in range(max_retries):
                try:
                    return fun(*args, **kwargs)
                except (DatabaseError, InvalidRequestError, StaleDataError):
                    _log.warning("Failed operation %s. Retrying %s more times.", fun.__name__,
                                 max_retries - retries - 1, exc_info=True)  # fmt: skip
                    if retries + 1 >= max_retries:
                        raise
            return None

        return _inner

    _database.retry = retry
    print("e2e celery_compat: added celery.backends.database.retry (missing in this celery)", file=sys.stderr)
