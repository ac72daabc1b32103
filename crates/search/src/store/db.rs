//! The two SQL engines a run store lives on, behind one small interface: statements written once
//! with numbered parameters (`?1`, rewritten to `$1` for PostgreSQL), rows read as dynamically
//! typed values, transactions begun and ended explicitly.
//!
//! The store's SQL is the common part of both dialects; what differs (the clock, row locks, the
//! integer width) is asked of [`Db`] by name, so each statement is written once.

use postgres::types::{IsNull, ToSql, Type};
pub use rusqlite::types::Value;
use std::error::Error;
use std::time::Duration;

/// An open connection to one of the engines.
pub enum Db {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Client>),
}

/// A PostgreSQL error as the server worded it (severity, message, detail), or the client's.
pub fn pg_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                s.push_str(&format!(" ({detail})"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut source = e.source();
            while let Some(inner) = source {
                let text = inner.to_string();
                if !s.contains(&text) {
                    s.push_str(&format!(": {text}"));
                }
                source = inner.source();
            }
            s
        }
    }
}

/// `?N` parameters as PostgreSQL writes them (`$N`). The store's statements hold no `?` in
/// string literals, so every `?` before a digit is a parameter.
fn dollars(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// A value bound to a PostgreSQL parameter of whatever type the server inferred for it.
#[derive(Debug)]
struct Bound<'a>(&'a Value);

impl ToSql for Bound<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Integer(i) => match *ty {
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().to_sql(ty, out),
                _ => i.to_sql(ty, out),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => f.to_sql(ty, out),
            },
            Value::Text(s) => s.to_sql(ty, out),
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// Column `i` of a PostgreSQL row as a dynamically typed value.
fn pg_value(row: &postgres::Row, i: usize) -> Result<Value, String> {
    let column = &row.columns()[i];
    let e = |e: postgres::Error| format!("column {}: {}", column.name(), pg_error(&e));
    Ok(match *column.type_() {
        Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(e)?.map_or(Value::Null, Value::Integer),
        Type::INT4 => row.try_get::<_, Option<i32>>(i).map_err(e)?.map_or(Value::Null, |v| Value::Integer(v.into())),
        Type::INT2 => row.try_get::<_, Option<i16>>(i).map_err(e)?.map_or(Value::Null, |v| Value::Integer(v.into())),
        Type::BOOL => row.try_get::<_, Option<bool>>(i).map_err(e)?.map_or(Value::Null, |v| Value::Integer(v.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i).map_err(e)?.map_or(Value::Null, Value::Real),
        Type::FLOAT4 => row.try_get::<_, Option<f32>>(i).map_err(e)?.map_or(Value::Null, |v| Value::Real(v.into())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            row.try_get::<_, Option<String>>(i).map_err(e)?.map_or(Value::Null, Value::Text)
        }
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i).map_err(e)?.map_or(Value::Null, Value::Blob),
        ref other => return Err(format!("column {} is of type {other}, which the store does not read", column.name())),
    })
}

impl Db {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// The database's clock, in seconds since the Unix epoch: leases are timed by the one clock
    /// every worker shares, never by a worker's own.
    pub fn now_sql(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "unixepoch('subsec')",
            Db::Postgres(_) => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
        }
    }

    /// What a `SELECT` that picks a row to update adds so that concurrent workers pass over rows
    /// another holds: PostgreSQL locks the row and skips locked ones; SQLite's one writer needs
    /// nothing.
    pub fn skip_locked(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "",
            Db::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// Statements without parameters, run in order.
    pub fn batch(&mut self, sql: &str) -> Result<(), String> {
        match self {
            Db::Sqlite(c) => c.execute_batch(sql).map_err(|e| e.to_string()),
            Db::Postgres(c) => c.batch_execute(sql).map_err(|e| pg_error(&e)),
        }
    }

    /// One statement; the number of rows it changed.
    pub fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, String> {
        match self {
            Db::Sqlite(c) => {
                c.execute(sql, rusqlite::params_from_iter(args.iter())).map(|n| n as u64).map_err(|e| e.to_string())
            }
            Db::Postgres(c) => {
                let bound: Vec<Bound<'_>> = args.iter().map(Bound).collect();
                let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
                c.execute(dollars(sql).as_str(), &refs).map_err(|e| pg_error(&e))
            }
        }
    }

    /// One statement's rows, each a value per column.
    pub fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Vec<Value>>, String> {
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql).map_err(|e| e.to_string())?;
                let n = stmt.column_count();
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                        (0..n).map(|i| r.get::<_, Value>(i)).collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(|e| e.to_string())?;
                rows.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
            }
            Db::Postgres(c) => {
                let bound: Vec<Bound<'_>> = args.iter().map(Bound).collect();
                let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
                let rows = c.query(dollars(sql).as_str(), &refs).map_err(|e| pg_error(&e))?;
                rows.iter().map(|r| (0..r.len()).map(|i| pg_value(r, i)).collect()).collect()
            }
        }
    }

    /// Runs `f` in one transaction: committed when it returns `Ok`, rolled back otherwise.
    /// SQLite's is `IMMEDIATE`, so a transaction that reads then writes holds the write lock
    /// from its start.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&mut Db) -> Result<T, String>) -> Result<T, String> {
        self.batch(if self.is_postgres() { "BEGIN" } else { "BEGIN IMMEDIATE" })?;
        match f(self) {
            Ok(v) => {
                self.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Tells the listeners of `channel` (PostgreSQL's NOTIFY; delivered at commit). SQLite has
    /// no listeners: its waiters poll.
    pub fn notify(&mut self, channel: &str) -> Result<(), String> {
        match self {
            Db::Sqlite(_) => Ok(()),
            Db::Postgres(c) => c.batch_execute(&format!("NOTIFY {channel}")).map_err(|e| pg_error(&e)),
        }
    }

    /// Starts listening on `channel` (PostgreSQL); nothing on SQLite.
    pub fn listen(&mut self, channel: &str) -> Result<(), String> {
        match self {
            Db::Sqlite(_) => Ok(()),
            Db::Postgres(c) => c.batch_execute(&format!("LISTEN {channel}")).map_err(|e| pg_error(&e)),
        }
    }

    /// Waits up to `timeout` for a notification on a channel this connection listens on
    /// (PostgreSQL), or sleeps `poll` (at most `timeout`) where there are none (SQLite). True
    /// when a notification came.
    pub fn wait(&mut self, timeout: Duration, poll: Duration) -> Result<bool, String> {
        match self {
            Db::Sqlite(_) => {
                std::thread::sleep(poll.min(timeout));
                Ok(false)
            }
            Db::Postgres(c) => {
                use postgres::fallible_iterator::FallibleIterator;
                let mut notes = c.notifications();
                let got = notes.timeout_iter(timeout).next().map_err(|e| pg_error(&e))?.is_some();
                // Drain the rest without waiting: one wake-up per burst.
                let mut rest = notes.iter();
                while rest.next().map_err(|e| pg_error(&e))?.is_some() {}
                Ok(got)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dollars;

    #[test]
    fn numbered_parameters_are_rewritten_for_postgres_and_nothing_else_is() {
        assert_eq!(
            dollars("UPDATE t SET a = ?12, b = '?' WHERE id = ?1 AND c = ?"),
            "UPDATE t SET a = $12, b = '?' WHERE id = $1 AND c = ?"
        );
    }
}
