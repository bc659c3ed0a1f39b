"""omega|ml datasets as a source and a sink of a stream.

An omega|ml dataset (``om.datasets``) is a MongoDB collection underneath, so
:class:`DatasetSource` is a :class:`~minibatch.contrib.mongodb.MongoSource` on
that collection that turns omega|ml's documents back into rows; it keeps its
position in the stream's status in the same way. :class:`DatasetSink` appends
each window's result to a dataset with ``om.datasets.put``.

``om`` is an omega|ml instance, e.g. ``omegaml.setup()`` or
``Omega(mongo_url=...)``. omega|ml (``pip install 'minibatch[omegaml]'``) is
never imported here: the instance you pass brings it.
"""
from minibatch.contrib.base import Sink, require
from minibatch.contrib.mongodb import MongoSink, MongoSource, json_safe  # noqa: F401 (0.6 exported MongoSink here)
from minibatch.errors import ConfigurationError, SinkError

#: the dataset kind of a DataFrame stored one document per row
DATAFRAME_KIND = 'pandas.dfrows'


def _datasets(om):
    datasets = getattr(om, 'datasets', None)
    if datasets is None or not hasattr(datasets, 'collection'):
        raise ConfigurationError(f'expected an omega|ml instance (with .datasets), got {om!r:.100}')
    return datasets


def _dataset_name(dataset):
    if not isinstance(dataset, str) or not dataset:
        raise ConfigurationError(f'a dataset name must be a non-empty string, got {dataset!r}')
    return dataset


class DatasetSource(MongoSource):
    """Appends the rows of an omega|ml dataset, the existing ones first, then each new one.

    :param om: an omega|ml instance
    :param dataset: the dataset's name; it need not exist yet
    :param kwargs: :class:`~minibatch.contrib.mongodb.MongoSource` options
        (``size``, ``delay``, ``query``, ``checkpoint``). The position is kept
        under ``'DatasetSource:<bucket>:<dataset>'`` in the stream's status.

    What becomes a message, by the dataset's kind:

    * a DataFrame (``pandas.dfrows``): each row, as ``{column: value}``. A
      named index is included under its name; an unnamed one (the usual
      0, 1, 2, ...) and omega|ml's bookkeeping fields are left out;
    * Python data (``python.data``, e.g. ``om.datasets.put({'a': 1}, name)``):
      each object put, if it is a dict; each dict of a list of dicts; anything
      else as ``{'data': value}``;
    * any other document: the document, with ``_id`` as a string.

    Rows are found by their MongoDB ``_id``: see MongoSource for what that
    means with several concurrent writers. Values are converted with
    :func:`~minibatch.contrib.mongodb.json_safe`.
    """

    def __init__(self, om, dataset, **kwargs):
        datasets = _datasets(om)
        self.om = om
        self.dataset = _dataset_name(dataset)
        kwargs.setdefault('checkpoint', f'DatasetSource:{getattr(datasets, "bucket", None)}:{self.dataset}')
        if kwargs.pop('idcol', None) not in (None, '_id'):
            raise ConfigurationError('DatasetSource reads rows in _id order; idcol cannot be changed')
        super().__init__(datasets.collection(self.dataset), **kwargs)

    def messages(self, doc):
        if set(doc) == {'_id', 'data'}:  # an object stored by om.datasets.put(obj) as Python data
            value = doc['data']
            if isinstance(value, dict):
                return [json_safe(value)]
            if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
                return [json_safe(item) for item in value]
            return [{'data': json_safe(value)}]
        if not any(key.startswith(('_idx#', '_om#')) for key in doc):
            return [json_safe(doc)]  # not a DataFrame row: the document as it is
        row = {}
        for key, value in doc.items():
            if key.startswith('_idx#'):
                # omega|ml stores index level L named N as '_idx#L_N'; unnamed levels are named by their number
                level, _, name = key[len('_idx#'):].partition('_')
                if name != level and name not in doc:
                    row[name] = json_safe(value)
            elif key != '_id' and not key.startswith('_om#'):
                row[key] = json_safe(value)
        return [row]

    def __repr__(self):
        return f'DatasetSource({self.dataset!r})'


class DatasetSinkError(SinkError):
    """omega|ml failed to write a window to the dataset; its error is the ``__cause__``."""


class DatasetSink(Sink):
    """Appends each window's result to an omega|ml dataset.

    :param om: an omega|ml instance
    :param dataset: the dataset's name; created by the first ``put`` if missing
    :param kwargs: passed to ``om.datasets.put`` (e.g. ``attributes=``,
        ``kind=``); ``append=False`` replaces the dataset with each window

    ``put(data)`` takes a dict or a list (or tuple) of dicts and returns how
    many it wrote; an empty list writes nothing. If the dataset is (or will be) a DataFrame dataset — the
    default for a new one — the rows are put as a ``pandas.DataFrame``, one
    document per row, readable with ``om.datasets.get(dataset)``. A dataset of
    another kind (e.g. ``python.data``) receives ``data`` as it is, and
    omega|ml stores it its own way. It returns when omega|ml has written the
    data; any failure raises :class:`DatasetSinkError` (omega|ml's error as
    its ``__cause__`` and in its message), so the window is retried and then
    dead-lettered. omega|ml writes the rows of one put in one insert, but a
    retried window is written again: the dataset can hold a window twice.
    A :class:`~minibatch.contrib.base.Sink`.
    """
    error = DatasetSinkError

    def __init__(self, om, dataset, **kwargs):
        self.datasets = _datasets(om)
        self.om = om
        self.dataset = _dataset_name(dataset)
        self.kwargs = {'append': True, **kwargs}

    def _as_frame(self):
        kind = self.kwargs.get('kind')
        if kind is None:
            meta = self.datasets.metadata(self.dataset)
            kind = meta.kind if meta is not None else DATAFRAME_KIND
        return kind == DATAFRAME_KIND

    def put(self, data):
        """Write ``data`` (a dict, or a list of dicts) to the dataset; return how many rows were written."""
        # a dataset of another kind than a DataFrame gets `data` as it was given (a dict stays a dict)
        return super().put(data, given=data)

    def write(self, rows, given=None):
        """Put the rows as one DataFrame, or ``given`` (what ``put`` got) to a dataset of another kind."""
        if self._as_frame():
            pandas = require('pandas', 'omegaml')
            obj = pandas.DataFrame(rows)
        else:
            obj = rows if given is None else given
        self.datasets.put(obj, self.dataset, **self.kwargs)
        return len(rows)

    def __repr__(self):
        return f'DatasetSink({self.dataset!r})'
