#!/usr/bin/env python3
"""asyncpg check: run directly and through phigate, the JSON output must be identical.

asyncpg speaks only the extended protocol, prepares every statement, and uses the binary format
for results and parameters: a good test of a gateway that must decide at Parse and relay binary.
Usage: check_asyncpg.py POSTGRES_URL
"""

import asyncio
import datetime
import decimal
import hashlib
import json
import sys
import uuid


async def main(url):
    import asyncpg

    out = {"driver": "asyncpg", "driver_version": asyncpg.__version__}
    conn = await asyncpg.connect(url)
    try:
        out["patients"] = await conn.fetchval("SELECT count(*) FROM patients")
        rows = await conn.fetch("SELECT id, mrn, date_of_birth FROM patients WHERE id = ANY($1::int[]) ORDER BY id",
                                [1, 2, 3])
        out["rows"] = [[r["id"], r["mrn"], r["date_of_birth"].isoformat()] for r in rows]
        values = await conn.fetchrow(
            "SELECT $1::int8, $2::numeric, $3::text, $4::bytea, $5::timestamptz, $6::uuid, $7::jsonb, $8::int4[], $9::bool",
            2**62, decimal.Decimal("12345.678"), "héllo ✓", bytes(range(256)),
            datetime.datetime(2024, 3, 31, 1, 30, tzinfo=datetime.timezone.utc),
            uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), json.dumps({"a": [1, 2]}), [1, None, 3], True)
        out["binary_round_trip"] = [str(values[0]), str(values[1]), values[2],
                                    hashlib.sha256(values[3]).hexdigest(), values[4].isoformat(), str(values[5]),
                                    values[6], list(values[7]), values[8]]
        stmt = await conn.prepare("SELECT $1::int * 2")
        out["prepared"] = [await stmt.fetchval(i) for i in range(5)]
        async with conn.transaction():
            cur = await conn.cursor("SELECT id FROM patients ORDER BY id")
            out["cursor_first"] = [r["id"] for r in await cur.fetch(3)]
        await conn.execute("CREATE TEMP TABLE t (id int, v text)")
        copied = await conn.copy_records_to_table("t", records=[(i, f"v{i}") for i in range(5000)])
        out["copy_in"] = copied
        rows = await conn.fetch("SELECT sum(id)::int8 AS s, count(*) AS n FROM t")
        out["copy_in_check"] = [rows[0]["s"], rows[0]["n"]]
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (-1, 'x')")
                await conn.execute("SELECT 1/0")
        except asyncpg.PostgresError as e:
            out["error"] = e.sqlstate
        out["after_rollback"] = await conn.fetchval("SELECT count(*) FROM t WHERE id = -1")
        results = await asyncio.gather(*[conn.fetchval("SELECT $1::int + 1", i) for i in range(1)])
        out["gather"] = results
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
    try:
        out["pool"] = sorted(await asyncio.gather(*[pool.fetchval("SELECT $1::int * 10", i) for i in range(8)]))
    finally:
        await pool.close()
    print(json.dumps(out, sort_keys=True, ensure_ascii=True))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: check_asyncpg.py POSTGRES_URL")
    asyncio.run(main(sys.argv[1]))
