"""The masking leak corpus through psycopg 3: every query as text and as binary results, every
COPY. Values are printed (decoded by psycopg with their declared types) to stdout; errors and
notices to stderr; the caller checks both for PHI. Exits non-zero only if a value fails to
decode (a masked value invalid for its type) or the connection breaks.

Usage: mask_corpus.py CONNINFO CORPUS_JSON COPIES_JSON
"""

import json
import sys

import psycopg


def main():
    conninfo, corpus, copies = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    conn = psycopg.connect(conninfo, autocommit=True)
    conn.add_notice_handler(
        lambda d: print("notice:", d.message_primary, d.message_detail, d.context, file=sys.stderr))
    rows = values = errors = 0
    for sql in corpus:
        for binary in (False, True):
            try:
                with conn.cursor(binary=binary) as cur:
                    cur.execute(sql)
                    while True:
                        if cur.description is not None:
                            for row in cur.fetchall():
                                rows += 1
                                for v in row:
                                    values += 1
                                    print(repr(v))
                        if not cur.nextset():
                            break
            except psycopg.errors.DataError as e:
                # A value the database could not convert: the message may quote it.
                errors += 1
                print("error:", e.diag.message_primary, e.diag.message_detail, file=sys.stderr)
            except psycopg.Error as e:
                if conn.closed:
                    raise
                errors += 1
                print("error:", e.diag.message_primary, e.diag.message_detail,
                      e.diag.message_hint, e.diag.context, file=sys.stderr)
    for sql in copies:
        try:
            with conn.cursor() as cur:
                with cur.copy(sql) as copy:
                    for data in copy:
                        sys.stdout.write(bytes(data).decode("utf-8", "replace"))
        except psycopg.Error as e:
            if conn.closed:
                raise
            errors += 1
            print("error:", e.diag.message_primary, e.diag.message_detail, file=sys.stderr)
    conn.close()
    print(f"ok {len(corpus)} queries, {rows} rows, {values} values, {errors} errors", file=sys.stderr)


if __name__ == "__main__":
    main()
