"""Small helpers shared by the test modules."""
import time


def wait_until(condition, timeout=5.0, interval=0.02, message='condition', alive=()):
    """Poll ``condition()`` until it returns something truthy, and return that.

    Fails at the deadline, or at once if a process in ``alive`` (Popen objects)
    has exited, so that a crashed consumer does not cost the whole timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        dead = [proc for proc in alive if proc.poll() is not None]
        if dead:
            raise AssertionError(f'process exited with {dead[0].returncode} while waiting for {message}')
        if time.monotonic() > deadline:
            raise AssertionError(f'{message} not met within {timeout}s (last value: {value!r})')
        time.sleep(interval)
