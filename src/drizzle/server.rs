//! The applied-migrations table of a PostgreSQL or MySQL/MariaDB database, read the way drizzle-kit's migrator reads
//! it, and nothing else: one connection with a connect time limit, a read-only transaction, statement time limits
//! on the server and an overall one here; never DDL or DML. Errors name the host, port and database, never the user's
//! password (which lives in a [`Secret`] until the one call that opens the connection).

use std::time::Duration;

use crate::drizzle::database::{Applied, ReplayFailure};
use crate::project::Secret;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the whole read may take (connect, queries, close).
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// A server database whose migrations table dreamerd reads.
#[derive(Debug, Clone)]
pub struct Server {
    pub dialect: Dialect,
    url: Secret,
    /// Where it is, without credentials: `127.0.0.1:5432/app`.
    pub address: String,
    /// `migrations.schema` (PostgreSQL only; default `drizzle`).
    pub schema: String,
    /// `migrations.table` (default `__drizzle_migrations`).
    pub table: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
}

impl Dialect {
    /// The drizzle config's dialect, if it is one read here.
    pub fn of(dialect: &str) -> Option<Dialect> {
        match dialect {
            "postgresql" => Some(Dialect::Postgres),
            "mysql" => Some(Dialect::MySql),
            _ => None,
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Dialect::Postgres => 5432,
            Dialect::MySql => 3306,
        }
    }
}

impl Server {
    /// The server a database URL names (`postgres://…`, `postgresql://…`, `mysql://…`). `Err` says what is wrong
    /// without repeating the URL.
    pub fn new(dialect: Dialect, url: &Secret, schema: &str, table: &str) -> Result<Server, String> {
        let address = address(dialect, url.expose())?;
        Ok(Server { dialect, url: url.clone(), address, schema: schema.into(), table: table.into() })
    }

    /// The applied migrations (`None`: the table does not exist, so nothing was applied). `Err` is one line that
    /// names the server and says why it could not be read.
    pub fn applied(&self) -> Result<Option<Vec<Applied>>, String> {
        self.block_on("read the database", READ_TIMEOUT, async {
            match self.dialect {
                Dialect::Postgres => postgres::applied(self).await,
                Dialect::MySql => mysql::applied(self).await,
            }
        })
    }

    /// Runs `work` on a runtime of its own (the engine's code is blocking), within `limit`; errors say what could
    /// not be done (`what`) and where.
    fn block_on<T>(
        &self,
        what: &str,
        limit: Duration,
        work: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime to {what}: {e}"))?;
        match runtime.block_on(async { tokio::time::timeout(limit, work).await }) {
            Ok(result) => result.map_err(|why| format!("cannot {what} at {}: {why}", self.address)),
            Err(_) => {
                Err(format!("cannot {what} at {}: no answer within {}s", self.address, limit.as_secs()))
            }
        }
    }
}

impl Server {
    /// PostgreSQL only (its DDL is transactional): replays the migrations migrate would run inside one transaction
    /// that is always rolled back, and returns the first statement the server refuses, with its words and SQLSTATE.
    /// This is the one kind of write dreamerd allows itself on a server: it leaves nothing behind (the locks it takes
    /// last as long as the replay, at most `lock_timeout` 5 s to get each). `Ok(None)`: every statement ran.
    pub fn replay(&self, drizzle: &std::path::Path) -> Result<Option<ReplayFailure>, String> {
        if self.dialect != Dialect::Postgres {
            return Err("only PostgreSQL's DDL can be replayed and rolled back".into());
        }
        self.block_on("replay on the database", REPLAY_TIMEOUT, postgres::replay(self, drizzle))
    }
}

/// A server database's tables and columns (`table` → `column type` lines; PostgreSQL tables as `schema.table`, every
/// schema but the system's), and how many migrations its table records: what a failed migrate may have changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    pub tables: std::collections::BTreeMap<String, Vec<String>>,
    pub migrations: usize,
    /// The newest applied migration's `created_at`: 0.x's migrate runs what comes after it.
    pub newest: Option<i64>,
    /// The rows of the migrations table: 1.0's migrate runs what they do not name.
    pub applied: Vec<Applied>,
}

impl Shape {
    fn with_applied(mut self, applied: Option<Vec<Applied>>) -> Shape {
        let applied = applied.unwrap_or_default();
        self.migrations = applied.len();
        self.newest = applied.iter().map(|a| a.created_at).max();
        self.applied = applied;
        self
    }
}

/// What a failed migrate left in a server database, compared with its shape before (the `database` of a failed
/// push): on MySQL, whose DDL commits as it runs, the statements before the failing one stay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    pub changed: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables_created: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables_dropped: Vec<String>,
    /// `table.column type`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns_added: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns_dropped: Vec<String>,
    /// Migrations the table recorded meanwhile.
    #[serde(default)]
    pub migrations_recorded: usize,
    /// MySQL: the statements of the failed migration that ran before the one that failed (they stay: DDL commits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statements_applied: Vec<String>,
    /// The drift between the migration folder (as the failed push left it) and the database now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<crate::drizzle::Drift>,
}

impl Change {
    pub fn between(before: &Shape, after: &Shape) -> Change {
        let mut c = Change {
            changed: false,
            tables_created: Vec::new(),
            tables_dropped: Vec::new(),
            columns_added: Vec::new(),
            columns_dropped: Vec::new(),
            migrations_recorded: after.migrations.saturating_sub(before.migrations),
            drift: Vec::new(),
            statements_applied: Vec::new(),
        };
        for (table, columns) in &after.tables {
            match before.tables.get(table) {
                None => c.tables_created.push(table.clone()),
                Some(old) => c.columns_added.extend(
                    columns.iter().filter(|col| !old.contains(col)).map(|col| format!("{table}.{col}")),
                ),
            }
        }
        for (table, columns) in &before.tables {
            match after.tables.get(table) {
                None => c.tables_dropped.push(table.clone()),
                Some(new) => c.columns_dropped.extend(
                    columns.iter().filter(|col| !new.contains(col)).map(|col| format!("{table}.{col}")),
                ),
            }
        }
        c.changed = !(c.tables_created.is_empty()
            && c.tables_dropped.is_empty()
            && c.columns_added.is_empty()
            && c.columns_dropped.is_empty()
            && c.migrations_recorded == 0);
        c
    }
}

/// How many tables the rows guard counts at most (a development database; beyond, it says it did not judge).
const MAX_COUNTED_TABLES: usize = 500;

impl Server {
    /// The number of rows of every table but the migrations table (PostgreSQL: `schema.table`), read-only, each count
    /// within the statement limit. `Err` when any cannot be counted (then the guard does not judge).
    pub fn row_counts(&self) -> Result<std::collections::BTreeMap<String, i64>, String> {
        self.block_on("count the rows", REPLAY_TIMEOUT, async {
            match self.dialect {
                Dialect::Postgres => postgres::row_counts(self).await,
                Dialect::MySql => mysql::row_counts(self).await,
            }
        })
    }

    /// The tables and columns of the database, read-only.
    pub fn shape(&self) -> Result<Shape, String> {
        self.block_on("read the database", READ_TIMEOUT, async {
            match self.dialect {
                Dialect::Postgres => postgres::shape(self).await,
                Dialect::MySql => mysql::shape(self).await,
            }
        })
    }
}

/// MySQL's DDL cannot be replayed without being applied, so the failing statement is predicted instead: the
/// statements migrate was about to run are walked against the database's tables and columns as they were before it,
/// for the failures a database out of step with drizzle/ gives (a table or column that exists already, or does not).
/// `None` when none of them would fail so, or a statement is beyond what is followed here.
pub fn predict_mysql_failure(statements: &[(String, String)], before: &Shape) -> Option<ReplayFailure> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut tables: BTreeMap<String, BTreeSet<String>> = before
        .tables
        .iter()
        .map(|(t, cols)| {
            (
                t.to_ascii_lowercase(),
                cols.iter().filter_map(|c| c.split(' ').next()).map(str::to_ascii_lowercase).collect(),
            )
        })
        .collect();
    let fail = |migration: &str, statement: &str, error: String| {
        Some(ReplayFailure { migration: migration.into(), statement: statement.into(), error })
    };
    for (migration, statement) in statements {
        let words = sql_words(statement);
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        let at = |i: usize| upper.get(i).map(String::as_str).unwrap_or("");
        let name = |i: usize| words.get(i).map(|w| unquoted(w)).unwrap_or_default();
        match (at(0), at(1)) {
            ("CREATE", "TABLE") => {
                let (table, if_not) = if at(2) == "IF" { (name(5), true) } else { (name(2), false) };
                if tables.contains_key(&table.to_ascii_lowercase()) && !if_not {
                    return fail(migration, statement, format!("Table '{table}' already exists (1050)"));
                }
                tables.entry(table.to_ascii_lowercase()).or_default();
            }
            ("DROP", "TABLE") => {
                let (table, if_exists) = if at(2) == "IF" { (name(4), true) } else { (name(2), false) };
                if tables.remove(&table.to_ascii_lowercase()).is_none() && !if_exists {
                    return fail(migration, statement, format!("Unknown table '{table}' (1051)"));
                }
            }
            ("ALTER", "TABLE") => {
                let table = name(2);
                let Some(columns) = tables.get_mut(&table.to_ascii_lowercase()) else {
                    return fail(migration, statement, format!("Table '{table}' doesn't exist (1146)"));
                };
                let column_at = if at(4) == "COLUMN" { 5 } else { 4 };
                let column = name(column_at).to_ascii_lowercase();
                match at(3) {
                    "ADD"
                        if !matches!(
                            at(4),
                            "CONSTRAINT" | "INDEX" | "KEY" | "UNIQUE" | "PRIMARY" | "FOREIGN"
                        ) =>
                    {
                        if !columns.insert(column.clone()) {
                            return fail(
                                migration,
                                statement,
                                format!("Duplicate column name '{column}' (1060)"),
                            );
                        }
                    }
                    "DROP"
                        if at(4) == "COLUMN"
                            || !matches!(at(4), "CONSTRAINT" | "INDEX" | "KEY" | "PRIMARY" | "FOREIGN") =>
                    {
                        if !columns.remove(&column) {
                            return fail(
                                migration,
                                statement,
                                format!("Can't DROP COLUMN `{column}`; check that it exists (1091)"),
                            );
                        }
                    }
                    "RENAME" if at(4) == "COLUMN" => {
                        let to = name(7).to_ascii_lowercase();
                        if !columns.remove(&column) {
                            return fail(
                                migration,
                                statement,
                                format!("Unknown column '{column}' in '{table}' (1054)"),
                            );
                        }
                        columns.insert(to);
                    }
                    // MODIFY, CHANGE, indexes, constraints: not followed; nothing after them is predicted either.
                    _ => return None,
                }
            }
            ("CREATE", _) | ("DROP", _) => {}
            _ => return None,
        }
    }
    None
}

/// The words of a statement: identifiers (backquoted ones whole), keywords, with comments and punctuation dropped.
fn sql_words(statement: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = statement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' => {
                let mut w = String::from('`');
                for d in chars.by_ref() {
                    w.push(d);
                    if d == '`' {
                        break;
                    }
                }
                words.push(w);
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
            }
            c if c.is_alphanumeric() || c == '_' || c == '.' => {
                let mut w = String::from(c);
                while let Some(&d) = chars.peek() {
                    if d.is_alphanumeric() || d == '_' || d == '.' {
                        w.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                words.push(w);
            }
            _ => {}
        }
    }
    words
}

fn unquoted(word: &str) -> String {
    let word = word.rsplit('.').next().unwrap_or(word);
    word.trim_matches('`').to_string()
}

/// How long a replay may take in all.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);

/// `host:port/database` of a URL, never its user or password.
fn address(dialect: Dialect, url: &str) -> Result<String, String> {
    let invalid =
        || "the database URL cannot be parsed (it is not printed: it may hold a password)".to_string();
    let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
    let known = match dialect {
        Dialect::Postgres => matches!(scheme, "postgres" | "postgresql"),
        Dialect::MySql => matches!(scheme, "mysql" | "mariadb"),
    };
    if !known {
        return Err(format!("a {scheme}:// URL is not a {dialect:?} database URL"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    let database = rest.split_once('/').map(|(_, d)| d.split(['?', '#']).next().unwrap_or("")).unwrap_or("");
    let hostport = if hostport.is_empty() { "localhost" } else { hostport };
    let with_port = if hostport.ends_with(']') || !hostport.contains(':') {
        format!("{hostport}:{}", dialect.default_port())
    } else {
        hostport.to_string()
    };
    let database = percent_encoding::percent_decode_str(database).decode_utf8_lossy();
    Ok(format!("{with_port}/{database}"))
}

/// The database URL drizzle-kit would connect with, from `dbCredentials` given as parts (`host`, `port`, `user`,
/// `password`, `database`, `ssl`): the one form the readers take.
pub fn url_from_parts(dialect: &str, credentials: &serde_json::Value) -> Option<String> {
    let dialect = Dialect::of(dialect)?;
    let text = |key: &str| credentials.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let host = text("host")?;
    let port = credentials.get("port").and_then(|p| p.as_u64().or_else(|| p.as_str()?.parse().ok()));
    let user = text("user").or_else(|| text("username")).unwrap_or_default();
    let password = text("password");
    let database = text("database").unwrap_or_default();
    // RFC 3986's unreserved characters stay as they are.
    const COMPONENT: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    let encode = |s: &str| percent_encoding::utf8_percent_encode(s, COMPONENT).to_string();
    let auth = match (user.is_empty(), password) {
        (true, _) => String::new(),
        (false, Some(p)) => format!("{}:{}@", encode(&user), encode(&p)),
        (false, None) => format!("{}@", encode(&user)),
    };
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    // `ssl: true`, `"require"` or an options object: TLS is required; `false` or absent: it is not.
    let ssl = match credentials.get("ssl") {
        None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => None,
        Some(serde_json::Value::String(s)) if s == "prefer" || s == "allow" || s == "disable" => None,
        Some(_) => Some(()),
    };
    let (scheme, tls) = match dialect {
        Dialect::Postgres => ("postgres", "?sslmode=require"),
        Dialect::MySql => ("mysql", "?ssl=true"),
    };
    Some(format!(
        "{scheme}://{auth}{host}{port}/{}{}",
        encode(&database),
        if ssl.is_some() { tls } else { "" }
    ))
}

/// Whether a URL's query asks for TLS.
fn wants_tls(url: &str) -> bool {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    query.split('&').any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "sslmode" | "ssl-mode" => {
                !matches!(v.to_ascii_lowercase().as_str(), "disable" | "allow" | "prefer")
            }
            "ssl" | "require_ssl" => !matches!(v, "false" | "0" | ""),
            _ => false,
        }
    })
}

/// A TLS client configuration with the webpki roots, on ring (the provider dreamerd uses everywhere).
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

mod postgres {
    use super::*;

    /// A connection in a read-only transaction (the server refuses any write in it, whatever is sent), with
    /// statement and lock time limits.
    async fn read_only(server: &Server) -> Result<tokio_postgres::Client, String> {
        let client = connect(server).await?;
        client
            .batch_execute(
                "BEGIN READ ONLY; SET LOCAL statement_timeout = 5000; SET LOCAL lock_timeout = 2000",
            )
            .await
            .map_err(|e| said(&e))?;
        Ok(client)
    }

    pub async fn applied(server: &Server) -> Result<Option<Vec<Applied>>, String> {
        let client = read_only(server).await?;
        let rows = applied_on(server, &client).await;
        let _ = client.batch_execute("ROLLBACK").await;
        rows
    }

    /// The migrations table's rows on an open connection (`None`: no table).
    async fn applied_on(
        server: &Server,
        client: &tokio_postgres::Client,
    ) -> Result<Option<Vec<Applied>>, String> {
        let exists = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2)",
                &[&server.schema, &server.table],
            )
            .await
            .map_err(|e| said(&e))?
            .get::<_, bool>(0);
        if !exists {
            return Ok(None);
        }
        // drizzle-kit 1.0's migrator adds `name` to the table.
        let named = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 \
                 AND column_name = 'name')",
                &[&server.schema, &server.table],
            )
            .await
            .map_err(|e| said(&e))?
            .get::<_, bool>(0);
        let query = format!(
            "SELECT hash::text, created_at::bigint, {} FROM {}.{} ORDER BY created_at",
            if named { "name::text" } else { "NULL::text" },
            quoted(&server.schema),
            quoted(&server.table)
        );
        let rows = client.query(&query, &[]).await.map_err(|e| said(&e))?;
        Ok(Some(
            rows.iter()
                .map(|r| Applied {
                    hash: r.get::<_, Option<String>>(0).unwrap_or_default(),
                    created_at: r.get::<_, Option<i64>>(1).unwrap_or(0),
                    name: r.get(2),
                })
                .collect(),
        ))
    }

    pub async fn shape(server: &Server) -> Result<Shape, String> {
        let client = read_only(server).await?;
        let rows = client
            .query(
                "SELECT table_schema::text, table_name::text, column_name::text, data_type::text \
                 FROM information_schema.columns \
                 WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_schema NOT LIKE 'pg_toast%' \
                 ORDER BY 1, 2, ordinal_position",
                &[],
            )
            .await
            .map_err(|e| said(&e))?;
        let mut shape = Shape::default();
        for r in rows {
            let table = format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1));
            shape.tables.entry(table).or_default().push(format!(
                "{} {}",
                r.get::<_, String>(2),
                r.get::<_, String>(3)
            ));
        }
        let applied = applied_on(server, &client).await?;
        let _ = client.batch_execute("ROLLBACK").await;
        Ok(shape.with_applied(applied))
    }

    pub async fn row_counts(server: &Server) -> Result<std::collections::BTreeMap<String, i64>, String> {
        let client = read_only(server).await?;
        let tables = client
            .query(
                "SELECT table_schema::text, table_name::text FROM information_schema.tables \
                 WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema') \
                 ORDER BY 1, 2",
                &[],
            )
            .await
            .map_err(|e| said(&e))?;
        if tables.len() > MAX_COUNTED_TABLES {
            return Err(format!("more than {MAX_COUNTED_TABLES} tables"));
        }
        let mut counts = std::collections::BTreeMap::new();
        for t in tables {
            let (schema, table): (String, String) = (t.get(0), t.get(1));
            if schema == server.schema && table == server.table {
                continue;
            }
            let query = format!("SELECT count(*) FROM {}.{}", quoted(&schema), quoted(&table));
            let n: i64 = client.query_one(&query, &[]).await.map_err(|e| said(&e))?.get(0);
            counts.insert(format!("{schema}.{table}"), n);
        }
        let _ = client.batch_execute("ROLLBACK").await;
        Ok(counts)
    }

    /// The URL as tokio-postgres reads it: the query parameters it knows (node-postgres and poolers add others, such
    /// as `pgbouncer=true` or `connection_limit`, which it would refuse), `sslmode=verify-full` and `verify-ca` as
    /// `require` (rustls verifies the certificate against the webpki roots in every case), `ssl=true` as `require`.
    pub(super) fn url_for_driver(url: &str) -> String {
        const KNOWN: &[&str] = &[
            "user",
            "password",
            "dbname",
            "options",
            "application_name",
            "host",
            "hostaddr",
            "port",
            "connect_timeout",
            "keepalives",
            "keepalives_idle",
            "target_session_attrs",
            "channel_binding",
        ];
        let Some((base, query)) = url.split_once('?') else { return url.to_string() };
        let mut kept: Vec<String> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => kept.push(format!(
                    "sslmode={}",
                    match value {
                        "verify-full" | "verify-ca" | "require" => "require",
                        "disable" => "disable",
                        _ => "prefer",
                    }
                )),
                "ssl" if wants_tls(&format!("?{pair}")) => kept.push("sslmode=require".into()),
                k if KNOWN.contains(&k) => kept.push(pair.to_string()),
                _ => {}
            }
        }
        if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) }
    }

    async fn connect(server: &Server) -> Result<tokio_postgres::Client, String> {
        let mut config: tokio_postgres::Config = url_for_driver(server.url.expose())
            .parse()
            .map_err(|_| "the database URL cannot be parsed (it is not printed: it may hold a password)")?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("dreamerd");
        if wants_tls(server.url.expose()) {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config()?);
            let (client, connection) = config.connect(tls).await.map_err(|e| said(&e))?;
            tokio::spawn(connection);
            Ok(client)
        } else {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| said(&e))?;
            tokio::spawn(connection);
            Ok(client)
        }
    }

    pub async fn replay(server: &Server, drizzle: &std::path::Path) -> Result<Option<ReplayFailure>, String> {
        let client = connect(server).await?;
        client
            .batch_execute("BEGIN; SET LOCAL statement_timeout = 30000; SET LOCAL lock_timeout = 5000")
            .await
            .map_err(|e| said(&e))?;
        let outcome = replay_in(server, &client, drizzle).await;
        // Whatever happened, nothing stays: the transaction is rolled back (and dropping the connection would too).
        let _ = client.batch_execute("ROLLBACK").await;
        outcome
    }

    async fn replay_in(
        server: &Server,
        client: &tokio_postgres::Client,
        drizzle: &std::path::Path,
    ) -> Result<Option<ReplayFailure>, String> {
        let applied = applied_on(server, client).await?.unwrap_or_default();
        for (migration, statement) in crate::drizzle::database::pending_statements(drizzle, &applied)? {
            if let Err(e) = client.batch_execute(&statement).await {
                return Ok(Some(ReplayFailure { migration, statement, error: said(&e) }));
            }
        }
        Ok(None)
    }

    fn quoted(name: &str) -> String {
        format!("\"{}\"", name.replace('"', "\"\""))
    }

    /// The server's words (with its SQLSTATE), or the connection's.
    fn said(e: &tokio_postgres::Error) -> String {
        if let Some(db) = e.as_db_error() {
            return format!("{} ({})", db.message(), db.code().code());
        }
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text
    }
}

mod mysql {
    use super::*;
    use mysql_async::prelude::Queryable;

    /// A connection in a read-only transaction, with the server's statement limits where it knows them (MariaDB:
    /// max_statement_time; MySQL: max_execution_time).
    async fn read_only(server: &Server) -> Result<mysql_async::Conn, String> {
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, mysql_async::Conn::new(options(server)?))
            .await
            .map_err(|_| format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()))?
            .map_err(|e| said(&e))?;
        let _ = conn.query_drop("SET SESSION max_statement_time = 5").await;
        let _ = conn.query_drop("SET SESSION max_execution_time = 5000").await;
        conn.query_drop("START TRANSACTION READ ONLY").await.map_err(|e| said(&e))?;
        Ok(conn)
    }

    async fn close(mut conn: mysql_async::Conn) {
        let _ = conn.query_drop("ROLLBACK").await;
        let _ = conn.disconnect().await;
    }

    pub async fn applied(server: &Server) -> Result<Option<Vec<Applied>>, String> {
        let mut conn = read_only(server).await?;
        let rows = applied_on(server, &mut conn).await;
        close(conn).await;
        rows
    }

    /// The migrations table's rows on an open connection (`None`: no table).
    async fn applied_on(
        server: &Server,
        conn: &mut mysql_async::Conn,
    ) -> Result<Option<Vec<Applied>>, String> {
        let exists: Option<i64> = conn
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
                (server.table.as_str(),),
            )
            .await
            .map_err(|e| said(&e))?;
        if exists.unwrap_or(0) == 0 {
            return Ok(None);
        }
        // drizzle-kit 1.0's migrator adds `name` to the table.
        let named: Option<i64> = conn
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ? \
                 AND column_name = 'name'",
                (server.table.as_str(),),
            )
            .await
            .map_err(|e| said(&e))?;
        let query = format!(
            "SELECT CAST(hash AS CHAR), CAST(created_at AS SIGNED), {} FROM `{}` ORDER BY created_at",
            if named.unwrap_or(0) > 0 { "CAST(name AS CHAR)" } else { "NULL" },
            server.table.replace('`', "``")
        );
        let rows: Vec<(Option<String>, Option<i64>, Option<String>)> =
            conn.query(query).await.map_err(|e| said(&e))?;
        Ok(Some(
            rows.into_iter()
                .map(|(hash, at, name)| Applied {
                    hash: hash.unwrap_or_default(),
                    created_at: at.unwrap_or(0),
                    name,
                })
                .collect(),
        ))
    }

    pub async fn shape(server: &Server) -> Result<Shape, String> {
        let mut conn = read_only(server).await?;
        let rows: Result<Vec<(String, String, String)>, String> = conn
            .query(
                "SELECT CAST(table_name AS CHAR), CAST(column_name AS CHAR), CAST(column_type AS CHAR) \
                 FROM information_schema.columns WHERE table_schema = DATABASE() ORDER BY table_name, ordinal_position",
            )
            .await
            .map_err(|e| said(&e));
        let applied = applied_on(server, &mut conn).await;
        close(conn).await;
        let mut shape = Shape::default();
        for (table, column, kind) in rows? {
            shape.tables.entry(table).or_default().push(format!("{column} {kind}"));
        }
        Ok(shape.with_applied(applied?))
    }

    pub async fn row_counts(server: &Server) -> Result<std::collections::BTreeMap<String, i64>, String> {
        let mut conn = read_only(server).await?;
        let counts = count_rows(server, &mut conn).await;
        close(conn).await;
        counts
    }

    async fn count_rows(
        server: &Server,
        conn: &mut mysql_async::Conn,
    ) -> Result<std::collections::BTreeMap<String, i64>, String> {
        let tables: Vec<String> = conn
            .query(
                "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY 1",
            )
            .await
            .map_err(|e| said(&e))?;
        if tables.len() > MAX_COUNTED_TABLES {
            return Err(format!("more than {MAX_COUNTED_TABLES} tables"));
        }
        let mut counts = std::collections::BTreeMap::new();
        for table in tables.into_iter().filter(|t| *t != server.table) {
            let n: Option<i64> = conn
                .query_first(format!("SELECT COUNT(*) FROM `{}`", table.replace('`', "``")))
                .await
                .map_err(|e| said(&e))?;
            counts.insert(table, n.unwrap_or(0));
        }
        Ok(counts)
    }

    /// Connection options from the URL, parsed here (mysql2's query parameters are not mysql_async's).
    fn options(server: &Server) -> Result<mysql_async::Opts, String> {
        let invalid =
            || "the database URL cannot be parsed (it is not printed: it may hold a password)".to_string();
        let url = url::Url::parse(server.url.expose()).map_err(|_| invalid())?;
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let database = decode(url.path().trim_start_matches('/'));
        let mut builder = mysql_async::OptsBuilder::default()
            .ip_or_hostname(url.host_str().unwrap_or("localhost").trim_matches(['[', ']']).to_string())
            .tcp_port(url.port().unwrap_or(3306))
            .user((!url.username().is_empty()).then(|| decode(url.username())))
            .pass(url.password().map(decode))
            .db_name((!database.is_empty()).then_some(database))
            .prefer_socket(false)
            .stmt_cache_size(0);
        if wants_tls(server.url.expose()) {
            builder = builder.ssl_opts(mysql_async::SslOpts::default());
        }
        Ok(builder.into())
    }

    fn said(e: &mysql_async::Error) -> String {
        match e {
            mysql_async::Error::Server(s) => format!("{} ({})", s.message, s.code),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_lists_what_a_failed_migrate_left() {
        let shape = |tables: &[(&str, &[&str])], migrations| Shape {
            tables: tables
                .iter()
                .map(|(t, c)| (t.to_string(), c.iter().map(|c| c.to_string()).collect()))
                .collect(),
            migrations,
            newest: None,
            applied: Vec::new(),
        };
        let before = shape(&[("users", &["id int", "name text"])], 1);
        assert!(!Change::between(&before, &before).changed);
        let after = shape(&[("users", &["id int", "name text", "age int"]), ("posts", &["id int"])], 1);
        let c = Change::between(&before, &after);
        assert!(c.changed);
        assert_eq!(
            (c.tables_created, c.columns_added),
            (vec!["posts".to_string()], vec!["users.age int".to_string()])
        );
        let c = Change::between(&after, &shape(&[], 2));
        assert_eq!((c.tables_dropped.len(), c.migrations_recorded), (2, 1));
    }

    #[test]
    fn a_mysql_failure_is_predicted_from_the_tables_before_migrate() {
        let before = Shape {
            tables: [("users".to_string(), vec!["id int(11)".to_string(), "age int(11)".to_string()])].into(),
            migrations: 1,
            newest: Some(1),
            applied: Vec::new(),
        };
        let run = |sql: &[&str]| {
            let statements: Vec<(String, String)> =
                sql.iter().map(|s| ("0001_x".to_string(), s.to_string())).collect();
            predict_mysql_failure(&statements, &before).map(|f| (f.statement, f.error))
        };
        let (statement, error) =
            run(&["CREATE TABLE `posts` (\n\t`id` int NOT NULL\n);", "ALTER TABLE `users` ADD `age` int;"])
                .unwrap();
        assert!(statement.starts_with("ALTER") && error == "Duplicate column name 'age' (1060)", "{error}");
        assert_eq!(
            run(&["CREATE TABLE `users` (`id` int);"]).unwrap().1,
            "Table 'users' already exists (1050)"
        );
        assert_eq!(run(&["ALTER TABLE `nope` ADD `x` int;"]).unwrap().1, "Table 'nope' doesn't exist (1146)");
        assert_eq!(
            run(&["ALTER TABLE `users` RENAME COLUMN `nope` TO `x`;"]).unwrap().1,
            "Unknown column 'nope' in 'users' (1054)"
        );
        assert_eq!(
            run(&["CREATE TABLE IF NOT EXISTS `users` (`id` int);", "ALTER TABLE `users` ADD `name` text;"]),
            None
        );
        assert_eq!(run(&["ALTER TABLE `users` MODIFY `age` bigint;", "CREATE TABLE `users` (x int);"]), None);
    }

    #[test]
    fn postgresql_urls_keep_only_what_the_driver_reads() {
        let url = |u: &str| postgres::url_for_driver(u);
        assert_eq!(url("postgres://u:p@h/d"), "postgres://u:p@h/d");
        assert_eq!(
            url(
                "postgres://u:p@h/d?sslmode=verify-full&pgbouncer=true&connection_limit=1&channel_binding=require"
            ),
            "postgres://u:p@h/d?sslmode=require&channel_binding=require"
        );
        assert_eq!(url("postgres://h/d?ssl=true"), "postgres://h/d?sslmode=require");
        assert_eq!(url("postgres://h/d?schema=public"), "postgres://h/d");
        for u in [
            "postgres://h/d?sslmode=verify-ca&x=1",
            "postgres://h/d?sslmode=no-verify",
            "postgres://h/d?ssl=true",
        ] {
            assert!(url(u).parse::<tokio_postgres::Config>().is_ok(), "{u}");
        }
    }

    #[test]
    fn addresses_never_carry_credentials() {
        let pg = |u: &str| address(Dialect::Postgres, u);
        assert_eq!(pg("postgres://u:s3cret@db.local:6543/app?sslmode=require").unwrap(), "db.local:6543/app");
        assert_eq!(pg("postgresql://u:p@w@127.0.0.1/app").unwrap(), "127.0.0.1:5432/app");
        assert_eq!(pg("postgres://[::1]/app").unwrap(), "[::1]:5432/app");
        assert_eq!(address(Dialect::MySql, "mysql://root:pw@localhost/db").unwrap(), "localhost:3306/db");
        let err = pg("mysql://root:hunter2@h/db").unwrap_err() + &pg("no url with hunter2").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn credentials_given_as_parts_become_a_url() {
        let parts = serde_json::json!({"host": "127.0.0.1", "port": 5433, "user": "app", "password": "p@ss:w/rd",
                                       "database": "app", "ssl": false});
        let url = url_from_parts("postgresql", &parts).unwrap();
        assert_eq!(url, "postgres://app:p%40ss%3Aw%2Frd@127.0.0.1:5433/app");
        assert!(!wants_tls(&url));
        let parts = serde_json::json!({"host": "db", "user": "u", "database": "d", "ssl": "require"});
        let url = url_from_parts("mysql", &parts).unwrap();
        assert_eq!(url, "mysql://u@db/d?ssl=true");
        assert!(wants_tls(&url));
        assert_eq!(url_from_parts("sqlite", &parts), None);
        assert!(
            wants_tls("postgres://h/d?sslmode=verify-full") && !wants_tls("postgres://h/d?sslmode=disable")
        );
    }
}
