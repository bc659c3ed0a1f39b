"""Two consumer groups on one stream: billing and analytics both see every order.

    python examples/two_groups.py

Runs with the embedded store in a temporary folder (removed at the end) and
stops by itself after a few seconds. Billing totals each window of orders and
writes the total into the stream ``totals`` in the window's commit (exactly
once); analytics counts the items. Then analytics replays the last 40 orders,
and billing does not notice. (A count window waits until it is full: 100
orders make 4 windows of 25 and 5 of 20.) See docs/groups.rst.
"""
import collections
import os
import shutil
import tempfile
import threading
import time

import minibatch as mb

ORDERS = 100


def wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit('timed out: the consumers did not finish in time')
        time.sleep(0.05)


def main():
    folder = tempfile.mkdtemp(prefix='two-groups-')
    url = 'sqlite:///' + os.path.join(folder, 'two_groups.db')
    orders = mb.stream('orders', url=url)
    totals = mb.stream('totals', url=url)
    counted = collections.Counter()
    lock = threading.Lock()
    consumers = []
    try:
        # billing: each window's total goes to `totals` in the same transaction as the window's commit
        @mb.streaming(orders, size=25, group='billing', sink=totals, executor='inline', lease=2, blocking=False)
        def bill(window):
            return {'orders': len(window.data), 'amount': sum(order['amount'] for order in window.data)}

        # analytics: its own copy of every order, its own pace and its own window size; keep=True keeps
        # the orders in the stream after both groups committed them, so that it can replay them later
        @mb.streaming(orders, size=20, group='analytics', keep=True, executor='inline', lease=2, blocking=False)
        def analyse(window):
            with lock:
                counted.update(order['item'] for order in window.data)
        consumers = [bill, analyse]

        # both groups are registered before the first order: retention waits for both from the start
        wait_for(lambda: {'billing', 'analytics'} <= set(orders.groups()))
        items = ['tea', 'coffee', 'cake', 'juice']
        orders.append([{'id': i, 'item': items[i % 4], 'amount': 1 + i % 7} for i in range(ORDERS)])

        def caught_up(group):
            return orders.stats()['groups'][group]['lag'] == 0

        wait_for(lambda: caught_up('billing') and caught_up('analytics'))
        written = totals.store.find_available('totals')
        print(f'billing: {len(written)} totals written to the stream "totals", '
              f'{sum(t.data["orders"] for t in written)} orders, amount {sum(t.data["amount"] for t in written)}')
        print(f'analytics: {sum(counted.values())} items counted: {dict(sorted(counted.items()))}')

        # analytics looks at the last 40 orders again; billing is not affected
        last_40 = orders.store.messages('orders')[ORDERS - 40].id
        again = orders.replay('analytics', since=last_40)
        wait_for(lambda: sum(counted.values()) >= ORDERS + again and caught_up('analytics'))
        print(f'analytics: replayed {again} orders, {sum(counted.values())} items counted in all; '
              f'billing still has {len(totals.store.find_available("totals"))} totals')
        for group, figures in orders.stats()['groups'].items():
            print(f'group {group}: lag {figures["lag"]}, dead letters {figures["dead"]}, '
                  f'consumers alive {figures["consumers_alive"]}')
    finally:
        for consumer in consumers:
            consumer.stop()
        for consumer in consumers:
            consumer.thread.join(timeout=10)
        from minibatch.store import reset_stores
        reset_stores()  # closes the database file before it is removed
        shutil.rmtree(folder, ignore_errors=True)
    print('done')


if __name__ == '__main__':
    main()
