"""A consumer process for the chaos test (tests/test_chaos.py), killed and restarted at random.

    python tests/chaos_consumer.py URL STREAM OUTDIR OPTIONS_JSON

Runs ``@streaming(STREAM, url=URL, **OPTIONS)`` with an inline executor, so
that at most one window is in flight per process: a SIGKILL can cut short at
most one window, which bounds the duplicates the test allows. Extra option
(not passed to @streaming): ``pause``, seconds the function sleeps per window
after recording it, so that kills land in the middle of the work.

The function appends the ids of its window to OUTDIR/<pid>.ids, one line per
window, with a single ``write`` on a file opened with O_APPEND: a kill leaves
either the whole line or none of it, never half a window.
"""
import json
import os
import sys
import time


def main(argv):
    url, stream, outdir, options = argv[1], argv[2], argv[3], json.loads(argv[4])
    pause = options.pop('pause', 0)
    log = os.open(os.path.join(outdir, f'{os.getpid()}.ids'), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def process(window):
        # recorded first: a window counts as delivered once the function has it, so a kill during the
        # pause below leaves a delivered window uncommitted, to be delivered again (a duplicate)
        os.write(log, (' '.join(str(message['i']) for message in window.data) + '\n').encode())
        if pause:
            time.sleep(pause)

    import minibatch as mb
    mb.streaming(stream, url=url, executor='inline', **options)(process)


if __name__ == '__main__':
    main(sys.argv)
