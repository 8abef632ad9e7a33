// JDBC (pgjdbc) check: run directly and through phigate, the output must be identical.
// pgjdbc switches to named server-side statements after five executions (prepareThreshold),
// uses binary transfer for some types, and batches with the extended protocol.
// Usage: java -cp postgresql.jar:. CheckJdbc 'jdbc:postgresql://host:port/db?user=..&password=..'

import java.sql.*;
import java.util.*;

public class CheckJdbc {
    public static void main(String[] args) throws Exception {
        Map<String, Object> out = new TreeMap<>();
        try (Connection c = DriverManager.getConnection(args[0])) {
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT count(*) FROM patients")) {
                r.next();
                out.put("patients", r.getLong(1));
            }
            List<String> prepared = new ArrayList<>();
            try (PreparedStatement p = c.prepareStatement("SELECT mrn, date_of_birth FROM patients WHERE id = ?")) {
                for (int i = 1; i <= 8; i++) { // crosses prepareThreshold: named statements
                    p.setInt(1, i);
                    try (ResultSet r = p.executeQuery()) {
                        r.next();
                        prepared.add(r.getString(1) + "/" + r.getDate(2));
                    }
                }
            }
            out.put("prepared", prepared);
            try (PreparedStatement p = c.prepareStatement(
                    "SELECT ?::int8 + 1, ?::numeric, ?::text, ?::bytea, ?::bool, ?::float8")) {
                p.setLong(1, 1L << 62);
                p.setBigDecimal(2, new java.math.BigDecimal("12345.678"));
                p.setString(3, "h\u00e9llo");
                p.setBytes(4, new byte[] {0, 1, (byte) 255});
                p.setBoolean(5, true);
                p.setDouble(6, 2.5);
                try (ResultSet r = p.executeQuery()) {
                    r.next();
                    out.put("types", r.getLong(1) + "|" + r.getBigDecimal(2) + "|" + r.getString(3) + "|"
                            + Arrays.toString(r.getBytes(4)) + "|" + r.getBoolean(5) + "|" + r.getDouble(6));
                }
            }
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TEMP TABLE t (id int, v text)");
            }
            try (PreparedStatement p = c.prepareStatement("INSERT INTO t VALUES (?, ?)")) {
                for (int i = 0; i < 500; i++) {
                    p.setInt(1, i);
                    p.setString(2, "v" + i);
                    p.addBatch();
                }
                out.put("batch", Arrays.stream(p.executeBatch()).sum());
            }
            c.commit();
            try (Statement s = c.createStatement()) {
                s.execute("SELECT 1/0");
            } catch (SQLException e) {
                out.put("error", e.getSQLState());
            }
            c.rollback();
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT count(*), sum(id) FROM t")) {
                r.next();
                out.put("after_rollback", r.getLong(1) + "/" + r.getLong(2));
            }
            c.setAutoCommit(true);
            DatabaseMetaData md = c.getMetaData();
            List<String> tables = new ArrayList<>();
            try (ResultSet r = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (r.next()) {
                    String t = r.getString("TABLE_NAME");
                    if (!t.startsWith("pgbench")) tables.add(t); // another test creates those
                }
            }
            Collections.sort(tables);
            out.put("metadata_tables", tables);
        }
        System.out.println(out);
    }
}
