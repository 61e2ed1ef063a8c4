"""An old daemon following lock protocol B ("wait then steal", GivTCP v3's
`.regcache_lockfile_N`), as LEGACY.md describes it: poll exists() every 0.5 s
up to 10 times, delete the file on timeout (someone else's lock!) and skip;
else open it truncating and write the UTC time in isoformat(); delete it when
done.

usage: protocol_b.py LOCKFILE LOG COUNTER ITERATIONS WHO
"""
import datetime
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
    tries = 0
    while os.path.exists(lock) and tries < 10:
        time.sleep(0.5)
        tries += 1
    if tries == 10:
        append(f"X {who} {done}")  # the steal: protocol B breaking its own rules
        os.remove(lock)
        continue
    with open(lock, "w") as f:
        f.write(datetime.datetime.now(datetime.timezone.utc).isoformat())
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
