#!/usr/bin/env bash
# A tour of the `minibatch` command line, on a throwaway embedded store.
#
#     bash examples/cli_demo.sh
#
# Every command below runs as `python -m minibatch ...` (the same as the
# `minibatch` console script) against an SQLite file in a temporary folder,
# which is removed at the end. Set PYTHON to choose the interpreter. It takes
# about ten seconds: the consumer runs until its --timeout of three seconds.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"   # works from a clone without installing
PY=${PYTHON:-python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export MINIBATCH_URL="sqlite:///$work/cli-demo.db"

mb() {
    echo
    echo "\$ minibatch $*"
    "$PY" -m minibatch "$@"
}

# 1. the built-in demo: a producer and a consumer end to end
mb demo --messages 50 --size 10

# 2. append messages: JSON arguments, or JSON lines on stdin
mb append orders '{"item": "tea", "qty": 2}' '{"item": "milk", "qty": 1}'
printf '{"item": "bread", "qty": 1}\n{"item": "jam", "qty": 3}\n{"item": "poison", "qty": 0}\n' > "$work/orders.jsonl"
echo; echo "\$ minibatch append orders < orders.jsonl"
"$PY" -m minibatch append orders < "$work/orders.jsonl"
echo; echo "\$ minibatch append orders '[1, 2]'    # not an object: refused, nothing written"
"$PY" -m minibatch append orders '[1, 2]' || echo "(exit code $?)"

# 3. look at the stream without taking anything
mb status
mb tail orders -n 2

# 4. follow the stream while another process appends
echo; echo "\$ minibatch tail orders -n 0 -f --timeout 2 &   # then: minibatch append orders '{\"item\": \"honey\"}'"
"$PY" -m minibatch tail orders -n 0 -f --timeout 2 &
follower=$!
sleep 1
"$PY" -m minibatch append orders '{"item": "honey", "qty": 1}'
wait "$follower"

# 5. consume with a function from a module in the current folder
cat > "$work/shop.py" <<'EOF'
def pack(window):
    for order in window.data:
        if order['item'] == 'poison':
            raise ValueError(f'refusing to pack {order}')
    print('packed', [order['item'] for order in window.data], flush=True)
EOF
cd "$work"
mb consume orders shop:pack --size 1 --executor thread --timeout 3 --max-attempts 2 --retry-backoff 0.1

# 6. what failed, and cleaning up
mb dead-letters list orders
mb dead-letters purge orders --yes
mb status --consumers
