"""An old daemon following lock protocol A ("skip if busy", GivTCP v2's
`.lockfile`), as LEGACY.md describes it: check exists(), give up if set,
else create the file empty with a plain truncating open; delete it when done.

usage: protocol_a.py LOCKFILE LOG COUNTER ITERATIONS WHO
Each critical section appends "S WHO I" and "E WHO I" to LOG and increments
the number in COUNTER.
"""
import os
import sys
import time

lock, log, counter, iterations, who = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]


def append(line):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (line + "\n").encode())
    os.close(fd)


done = 0
while done < iterations:
    if os.path.exists(lock):
        time.sleep(0.002)  # "Lockfile set so aborting getData"; try at the next poll
        continue
    open(lock, "w").close()
    try:
        append(f"S {who} {done}")
        with open(counter) as f:
            value = int(f.read() or "0")
        with open(counter, "w") as f:
            f.write(str(value + 1))
        append(f"E {who} {done}")
        done += 1
    finally:
        try:
            os.remove(lock)
        except FileNotFoundError:
            pass
    time.sleep(0.002)
