#!/usr/bin/env node
// Real-driver check for phigate using node-postgres (pg) and pg-copy-streams.
//
// Usage: node check_pg.js POSTGRES_URL
//
// Runs a fixed set of protocol exercises (simple query, extended protocol with
// several types, named prepared statements, transaction error + rollback,
// COPY in/out, LISTEN/NOTIFY, notices, a pool of concurrent clients) and
// prints ONE line of JSON with sorted keys on stdout. The output must be
// identical whether the URL points straight at PostgreSQL or at the gateway,
// so nothing session-specific (PIDs, backend keys, timings, OIDs of user
// objects, server version) is printed. Only TEMP tables and generate_series
// are used. Any failure prints the error on stderr and exits non-zero.
'use strict';

// Dates without a zone (type date) are parsed in the process's local zone:
// pin it so the output does not depend on the machine.
process.env.TZ = 'UTC';

const crypto = require('crypto');
const { Readable } = require('stream');
const { pipeline } = require('stream/promises');
const pg = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');

const OVERALL_TIMEOUT_MS = 120000;
const NOTIFY_TIMEOUT_MS = 10000;

function check(cond, msg) {
  if (!cond) throw new Error(`check failed: ${msg}`);
}

function sha256(buf) {
  return crypto.createHash('sha256').update(buf).digest('hex');
}

// JSON.stringify with object keys sorted at every level.
function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === 'object' && !(value instanceof Date) && !Buffer.isBuffer(value)) {
    const out = {};
    for (const k of Object.keys(value).sort()) out[k] = sortKeys(value[k]);
    return out;
  }
  return value;
}
function stableStringify(value) {
  return JSON.stringify(sortKeys(value));
}
// Same, with every non-ASCII character escaped, so the bytes on stdout do not
// depend on any locale or terminal encoding.
function asciiStringify(value) {
  return stableStringify(value).replace(
    /[\u007f-\uffff]/g,
    (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0')
  );
}

// A JSON-friendly, deterministic rendering of a value returned by pg.
function show(v) {
  if (v === null || v === undefined) return null;
  if (v instanceof Date) return `Date(${v.toISOString()})`;
  if (Buffer.isBuffer(v)) return { len: v.length, sha256: sha256(v) };
  if (Array.isArray(v)) return v.map(show);
  if (typeof v === 'object') return `json:${stableStringify(v)}`;
  return `${typeof v}:${v}`;
}

async function newClient(url) {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10000 });
  // An 'error' event without a listener would crash the process with a less
  // useful message; make it fail the check instead.
  client.on('error', (err) => {
    console.error('client error event:', err);
    process.exit(1);
  });
  await client.connect();
  return client;
}

// ---------------------------------------------------------------------------
// simple query protocol
// ---------------------------------------------------------------------------
async function checkSimple(client) {
  // No values: sent as one simple 'Q' message; several statements allowed.
  const results = await client.query(
    "SELECT 1 AS one, 'hello'::text AS greeting, 2.5::float8 AS f, NULL::text AS n;" +
      ' SELECT g FROM generate_series(1, 3) AS g ORDER BY g;' +
      " SET TimeZone TO 'America/New_York'"
  );
  check(Array.isArray(results) && results.length === 3, 'multi-statement result count');
  const [first, second, third] = results;
  const ts = await client.query("SELECT '2024-07-04 12:00:00+00'::timestamptz::text AS t");
  return {
    first_fields: first.fields.map((f) => f.name),
    first_rows: first.rows.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, show(v)]))),
    second_rows: second.rows.map((r) => r.g),
    second_command: `${second.command} ${second.rowCount}`,
    third_command: third.command,
    timestamptz_text_after_set: ts.rows[0].t,
  };
}

// ---------------------------------------------------------------------------
// extended protocol, parameters of several types
// ---------------------------------------------------------------------------
async function checkParams(client) {
  const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const values = [
    2147483647,
    '9223372036854775807',
    '12345678901234567890.0123456789',
    'h\u00e9llo w\u00f6rld \u2713 \u{1F600}',
    bytes,
    '2024-02-29',
    new Date(Date.UTC(2024, 2, 31, 1, 30, 15, 123)),
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    { patient: { id: 7, tags: ['a', 'b'] }, ok: true, n: null },
    [1, 2, null, 3],
    null,
    true,
    -1.5,
    '',
  ];
  const res = await client.query(
    'SELECT $1::int4 AS int4, $2::int8 AS int8, $3::numeric AS numeric, $4::text AS text,' +
      ' $5::bytea AS bytea, $6::date AS date, $7::timestamptz AS timestamptz, $8::uuid AS uuid,' +
      ' $9::jsonb AS jsonb, $10::int4[] AS int_array, $11::int4 AS null_value, $12::bool AS bool,' +
      ' $13::float8 AS float8, $14::text AS empty_text',
    values
  );
  check(res.rows.length === 1, 'params: one row');
  const row = res.rows[0];
  check(row.int4 === values[0], 'int4 round trip');
  check(row.int8 === values[1], 'int8 round trip');
  check(row.numeric === values[2], 'numeric round trip');
  check(row.text === values[3], 'text round trip');
  check(Buffer.compare(row.bytea, bytes) === 0, 'bytea round trip');
  check(row.timestamptz.getTime() === values[6].getTime(), 'timestamptz round trip');
  check(row.uuid === values[7], 'uuid round trip');
  check(stableStringify(row.jsonb) === stableStringify(values[8]), 'jsonb round trip');
  check(stableStringify(row.int_array) === stableStringify(values[9]), 'int[] round trip');
  check(row.null_value === null, 'null round trip');
  const shown = {};
  for (const f of res.fields) shown[f.name] = show(row[f.name]);

  // Results as text for the same values (server-side rendering).
  const text = await client.query({
    text: 'SELECT $1::timestamptz::text AS ts, $2::numeric::text AS num, $3::int4[]::text AS arr',
    values: [values[6], '1.50', [1, null, 3]],
    rowMode: 'array',
  });

  // Binary result format for a few types pg can decode in binary.
  const bin = await client.query({
    text: 'SELECT $1::int4 AS i, $2::text AS t, $3::bool AS b',
    values: [123, 'binary', false],
    binary: true,
  });

  // A larger result set through the extended protocol.
  const big = await client.query({
    text: "SELECT g, repeat(md5(g::text), 3) AS pad FROM generate_series(1, $1::int) AS g ORDER BY g",
    values: [20000],
    rowMode: 'array',
  });
  const bigHash = crypto.createHash('sha256');
  for (const [g, pad] of big.rows) bigHash.update(`${g}:${pad}\n`);

  return {
    values: shown,
    field_types_builtin: res.fields.map((f) => f.dataTypeID),
    as_text: text.rows[0],
    binary_results: Object.fromEntries(Object.entries(bin.rows[0]).map(([k, v]) => [k, show(v)])),
    big_rows: big.rowCount,
    big_sha256: bigHash.digest('hex'),
  };
}

// ---------------------------------------------------------------------------
// named prepared statement executed twice
// ---------------------------------------------------------------------------
async function checkNamedPrepared(client) {
  const q = 'SELECT $1::int4 * 2 AS doubled, $2::text AS label';
  const r1 = await client.query({ name: 'q1', text: q, values: [21, 'first'] });
  // Second run: pg reuses the already-parsed statement (Bind/Execute only).
  const r2 = await client.query({ name: 'q1', text: q, values: [50, 'second'] });
  const r3 = await client.query({ name: 'q2', text: 'SELECT count(*)::int AS n FROM generate_series(1, $1::int)', values: [7] });
  const r4 = await client.query({ name: 'q1', text: q, values: [-1, 'third'] });
  const ps = await client.query(
    "SELECT name, statement FROM pg_prepared_statements WHERE name IN ('q1', 'q2') ORDER BY name"
  );
  return {
    runs: [r1.rows[0], r2.rows[0], r3.rows[0], r4.rows[0]],
    server_statements: ps.rows,
  };
}

// ---------------------------------------------------------------------------
// transaction with error + rollback
// ---------------------------------------------------------------------------
async function checkTransaction(client) {
  const out = {};
  await client.query('BEGIN');
  await client.query('CREATE TEMP TABLE tx_t (id int PRIMARY KEY, v text)');
  await client.query('INSERT INTO tx_t VALUES ($1, $2), ($3, $4)', [1, 'a', 2, 'b']);
  await client.query('SAVEPOINT sp1');
  await client.query('INSERT INTO tx_t VALUES ($1, $2)', [3, 'c']);
  await client.query('ROLLBACK TO SAVEPOINT sp1');
  out.count_after_savepoint_rollback = (await client.query('SELECT count(*)::int AS n FROM tx_t')).rows[0].n;
  try {
    await client.query('SELECT 1 / $1::int AS boom', [0]);
    throw new Error('division by zero did not raise');
  } catch (err) {
    check(err instanceof pg.DatabaseError, `unexpected error ${err}`);
    out.sqlstate = err.code;
    out.message = err.message;
    out.severity = err.severity;
  }
  try {
    await client.query('SELECT 1');
    throw new Error('query in aborted transaction did not raise');
  } catch (err) {
    out.aborted_tx_sqlstate = err.code;
  }
  const rb = await client.query('ROLLBACK');
  out.rollback_command = rb.command;
  out.temp_table_after_rollback = (await client.query("SELECT to_regclass('pg_temp.tx_t') AS t")).rows[0].t;

  // Errors outside a transaction, simple and extended protocol.
  try {
    await client.query('SELEC 1');
    throw new Error('syntax error did not raise');
  } catch (err) {
    out.syntax_sqlstate = err.code;
    out.syntax_position = err.position;
  }
  try {
    await client.query('SELECT * FROM phigate_no_such_table WHERE x = $1', [1]);
    throw new Error('undefined table did not raise');
  } catch (err) {
    out.undefined_table_sqlstate = err.code;
  }
  out.after = (await client.query("SELECT 'still alive' AS s")).rows[0].s;
  return out;
}

// ---------------------------------------------------------------------------
// COPY FROM STDIN / COPY TO STDOUT
// ---------------------------------------------------------------------------
const COPY_ROWS = 5000;

function* copyLines() {
  for (let i = 1; i <= COPY_ROWS; i++) {
    const name = i % 7 === 0 ? `name-${i}\\t\\\\ "quoted" \u00e9\\n` : `name-${i}`;
    const tags = i % 11 === 0 ? '\\N' : `{t${i},u${i % 5}}`;
    const ts = new Date(Date.UTC(2024, 0, 1) + i * 60000).toISOString();
    const data = `\\\\x${(i % 256).toString(16).padStart(2, '0')}00ff`;
    yield `${i}\t${name}\t${(i / 100).toFixed(2)}\t${ts}\t${data}\t${tags}\n`;
  }
}

async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function checkCopy(client) {
  const out = {};
  await client.query(
    'CREATE TEMP TABLE copy_t (id int4, name text, amount numeric, ts timestamptz, data bytea, tags text[])'
  );
  // Feed in small pieces so the data spans many CopyData messages.
  const ingest = client.query(copyFrom('COPY copy_t (id, name, amount, ts, data, tags) FROM STDIN'));
  await pipeline(Readable.from(copyLines()), ingest);
  out.in_rowcount = ingest.rowCount;

  const stats = await client.query(
    "SELECT count(*)::int AS n, sum(id)::int8 AS s, count(tags)::int AS with_tags," +
      " sum(length(name))::int8 AS name_len, max(ts)::text AS max_ts FROM copy_t"
  );
  out.table_stats = stats.rows[0];

  const textOut = client.query(copyTo('COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT'));
  const textBuf = await collect(textOut);
  out.text_out_rowcount = textOut.rowCount;
  out.text_out_bytes = textBuf.length;
  out.text_out_lines = textBuf.toString('utf8').split('\n').length - 1;
  out.text_out_sha256 = sha256(textBuf);
  // What went in is what comes out (ts is rendered in the session zone, so
  // compare the other columns).
  const sentIds = [...copyLines()].map((l) => l.split('\t').filter((_, idx) => idx !== 3).join('\t'));
  const gotIds = textBuf
    .toString('utf8')
    .split('\n')
    .slice(0, -1)
    .map((l) => l.split('\t').filter((_, idx) => idx !== 3).join('\t') + '\n');
  check(stableStringify(sentIds) === stableStringify(gotIds), 'COPY text round trip differs');

  const binOut = client.query(copyTo('COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT (FORMAT BINARY)'));
  const binBuf = await collect(binOut);
  out.binary_out_rowcount = binOut.rowCount;
  out.binary_out_bytes = binBuf.length;
  out.binary_out_sha256 = sha256(binBuf);

  // Bad data: the server rejects the COPY; the connection must stay usable.
  try {
    const bad = client.query(copyFrom('COPY copy_t (id) FROM STDIN'));
    await pipeline(Readable.from(['1\n', 'not-an-int\n']), bad);
    throw new Error('bad COPY data did not fail');
  } catch (err) {
    out.bad_copy_sqlstate = err.code;
  }
  out.count_after_bad_copy = (await client.query('SELECT count(*)::int AS n FROM copy_t')).rows[0].n;
  await client.query('DROP TABLE copy_t');
  return out;
}

// ---------------------------------------------------------------------------
// LISTEN / NOTIFY
// ---------------------------------------------------------------------------
function waitForNotifications(client, n, received) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.removeListener('notification', onMsg);
      reject(new Error(`timed out waiting for ${n} notifications, got ${JSON.stringify(received)}`));
    }, NOTIFY_TIMEOUT_MS);
    function onMsg(msg) {
      received.push([msg.channel, msg.payload]);
      if (received.length >= n) {
        clearTimeout(timer);
        client.removeListener('notification', onMsg);
        resolve(received);
      }
    }
    client.on('notification', onMsg);
  });
}

async function checkNotify(url) {
  const listener = await newClient(url);
  const sender = await newClient(url);
  try {
    await listener.query('LISTEN phigate_check');
    await listener.query('LISTEN "Mixed Case Chan"');

    const self = [];
    const selfDone = waitForNotifications(listener, 1, self);
    await listener.query("NOTIFY phigate_check, 'self payload \u00e9'");
    await selfDone;

    // Sent by another session: arrives while the listener is idle.
    const cross = [];
    const crossDone = waitForNotifications(listener, 4, cross);
    await sender.query("SELECT pg_notify('phigate_check', $1)", ['from sender 1']);
    await sender.query("SELECT pg_notify('Mixed Case Chan', $1)", ['from sender 2']);
    await sender.query('BEGIN');
    await sender.query("NOTIFY phigate_check, 'in tx'");
    await sender.query("NOTIFY phigate_check, 'in tx'"); // deduplicated by the server
    await sender.query("NOTIFY phigate_check, ''");
    await sender.query('COMMIT');
    await crossDone;

    await listener.query('UNLISTEN *');
    const late = [];
    const onLate = (msg) => late.push([msg.channel, msg.payload]);
    listener.on('notification', onLate);
    await sender.query("NOTIFY phigate_check, 'after unlisten'");
    await new Promise((r) => setTimeout(r, 500));
    await listener.query('SELECT 1');
    listener.removeListener('notification', onLate);
    return { self, cross, after_unlisten: late };
  } finally {
    await listener.end();
    await sender.end();
  }
}

// ---------------------------------------------------------------------------
// notices
// ---------------------------------------------------------------------------
async function checkNotice(client) {
  const notices = [];
  const onNotice = (msg) =>
    notices.push({
      severity: msg.severity,
      sqlstate: msg.code,
      message: msg.message,
      detail: msg.detail === undefined ? null : msg.detail,
      hint: msg.hint === undefined ? null : msg.hint,
    });
  client.on('notice', onNotice);
  try {
    await client.query(
      "DO $$ BEGIN RAISE NOTICE 'phigate notice %', 42;" +
        " RAISE WARNING 'phigate warning' USING DETAIL = 'some detail', HINT = 'a hint'; END $$"
    );
    // Notice during an extended-protocol query.
    await client.query({ text: 'DROP TABLE IF EXISTS phigate_never_existed_t', values: [], name: 'drop_notice' });
  } finally {
    client.removeListener('notice', onNotice);
  }
  check(notices.length === 3, `expected 3 notices, got ${JSON.stringify(notices)}`);
  return { notices };
}

// ---------------------------------------------------------------------------
// pool with 4 concurrent clients
// ---------------------------------------------------------------------------
async function checkPool(url) {
  const pool = new pg.Pool({ connectionString: url, max: 4, connectionTimeoutMillis: 10000 });
  pool.on('error', (err) => {
    console.error('pool error event:', err);
    process.exit(1);
  });
  try {
    const workers = [0, 1, 2, 3].map(async (w) => {
      const c = await pool.connect();
      try {
        // The sleep keeps all four sessions busy at the same time.
        const r = await c.query(
          'SELECT $1::int AS worker, pg_backend_pid() AS pid, sum(g)::int8 AS s' +
            ' FROM generate_series(1, $2::int) AS g, pg_sleep(0.2) GROUP BY 1, 2',
          [w, 1000 * (w + 1)]
        );
        return r.rows[0];
      } finally {
        c.release();
      }
    });
    const rows = await Promise.all(workers);
    // Plain pool.query calls on top, reusing the idle clients.
    const more = await Promise.all(
      [10, 20, 30, 40, 50, 60].map((x) => pool.query('SELECT $1::int + 1 AS v', [x]))
    );
    return {
      results: rows.map((r) => ({ worker: r.worker, sum: r.s })),
      distinct_sessions: new Set(rows.map((r) => r.pid)).size,
      total_clients: pool.totalCount,
      pool_query_results: more.map((r) => r.rows[0].v),
    };
  } finally {
    await pool.end();
  }
}

async function main() {
  const url = process.argv[2];
  if (!url) {
    console.error('usage: node check_pg.js POSTGRES_URL');
    process.exit(2);
  }
  const timer = setTimeout(() => {
    console.error(`check did not finish within ${OVERALL_TIMEOUT_MS} ms`);
    process.exit(1);
  }, OVERALL_TIMEOUT_MS);
  timer.unref();

  const results = { driver: 'pg', driver_version: require('pg/package.json').version };
  const client = await newClient(url);
  try {
    results.simple_query = await checkSimple(client);
    results.params = await checkParams(client);
    results.named_prepared = await checkNamedPrepared(client);
    results.transaction = await checkTransaction(client);
    results.copy = await checkCopy(client);
    results.notice = await checkNotice(client);
  } finally {
    await client.end();
  }
  results.notify = await checkNotify(url);
  results.pool = await checkPool(url);
  process.stdout.write(asciiStringify(results) + '\n');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
