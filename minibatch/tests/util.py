"""Helpers kept importable for third-party code and tests written for minibatch 0.6.

omegaml imports ``LocalExecutor`` from here; tests written for 0.6 import
``delete_database`` to start from an empty MongoDB database.
"""
from minibatch.executors import LocalExecutor

__all__ = ['LocalExecutor', 'delete_database']


def delete_database(url=None, dbname='test'):
    """Drop the MongoDB database ``dbname`` on the server of ``url``, and return the (now empty) database.

    Removes data: every collection of that database. For test set-ups, as in 0.6.
    """
    from minibatch import connectdb
    db = connectdb(url=url, dbname=dbname)
    db.client.drop_database(dbname)
    return db
