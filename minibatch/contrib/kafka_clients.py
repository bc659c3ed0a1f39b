"""Building kafka-python clients for :class:`~minibatch.contrib.kafka.KafkaSource` and
:class:`~minibatch.contrib.kafka.KafkaSink`.

What the source and the sink share: the broker list (:func:`_urls`), options
set only if this kafka-python version knows them (:func:`_known`), a
constructor that closes what a failed construction left running
(:func:`_construct`), and the text of a kafka-python error (:func:`_describe`).
"""
from minibatch.errors import ConfigurationError

#: brokers used when ``urls`` is not given
DEFAULT_URLS = ('localhost:9092',)


def _urls(urls):
    """A list of 'host:port' from a list, or a string with commas."""
    if urls is None:
        return list(DEFAULT_URLS)
    if isinstance(urls, str):
        urls = urls.split(',')
    urls = [u.strip() for u in urls if u and u.strip()]
    if not urls:
        raise ConfigurationError("urls must name at least one Kafka broker as 'host:port'")
    return urls


def _known(client_class, configs, name, value):
    """Set ``configs[name] = value`` unless given, if this kafka-python version knows the option."""
    if name not in configs and name in getattr(client_class, 'DEFAULT_CONFIG', {}):
        configs[name] = value


def _closing_client_factory(client_class, configs, made):
    """Make the client constructor remember the network client it creates.

    kafka-python 3 starts the client's I/O thread before it bootstraps; when
    the bootstrap fails, the constructor raises and leaves that thread
    running. A source that retries against a broker that is down would leak
    one thread per attempt, so :func:`_construct` closes what it made.
    """
    factory = configs.get('kafka_client') or getattr(client_class, 'DEFAULT_CONFIG', {}).get('kafka_client')
    if factory is None:
        return configs

    def make(**kwargs):
        client = factory(**kwargs)
        made.append(client)
        return client
    return dict(configs, kafka_client=make)


def _construct(client_class, **configs):
    made = []
    try:
        return client_class(**_closing_client_factory(client_class, configs, made))
    except BaseException:
        for client in made:
            try:
                client.close()
            except Exception:  # already broken; we only want its thread gone
                pass
        raise


def _describe(exc):
    # kafka-python's errors already start with their class name
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f'{name}: {text}'
