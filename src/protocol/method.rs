//! The methods of the protocol, one enum that owns each one's name and what it may do: the daemon
//! dispatches on it, the metrics count by it, the client names it, and `docs/protocol.md` lists
//! exactly these (a test keeps them equal).

/// One JSON-RPC method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// Present the API key (first on a TCP connection).
    Auth,
    /// Liveness and versions.
    Ping,
    /// Models, counters, latencies, cache figures.
    Status,
    /// The status as Prometheus text.
    Metrics,
    /// Generate text.
    Generate,
    /// Generate text, its pieces sent as they come.
    GenerateStream,
    /// Embed texts.
    Embed,
    /// Score documents against a query.
    Rerank,
    /// Count a generation's prompt tokens without running the model.
    CountTokens,
    /// A text's token ids under the generation model's tokenizer.
    Tokenize,
    /// Token ids back to text.
    Detokenize,
    /// The result cache's figures.
    CacheStats,
    /// Empty the result cache (admins).
    CacheClear,
    /// Write a cache snapshot now (admins).
    CacheSnapshot,
    /// Re-read the configuration and models (admins).
    Reload,
}

impl Method {
    /// Every method, in the order `docs/protocol.md` lists them.
    pub const ALL: [Method; 15] = [
        Method::Auth,
        Method::Ping,
        Method::Status,
        Method::Metrics,
        Method::Generate,
        Method::GenerateStream,
        Method::Embed,
        Method::Rerank,
        Method::CountTokens,
        Method::Tokenize,
        Method::Detokenize,
        Method::CacheStats,
        Method::CacheClear,
        Method::CacheSnapshot,
        Method::Reload,
    ];

    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Method::Auth => "auth",
            Method::Ping => "ping",
            Method::Status => "status",
            Method::Metrics => "metrics",
            Method::Generate => "generate",
            Method::GenerateStream => "generate_stream",
            Method::Embed => "embed",
            Method::Rerank => "rerank",
            Method::CountTokens => "count_tokens",
            Method::Tokenize => "tokenize",
            Method::Detokenize => "detokenize",
            Method::CacheStats => "cache.stats",
            Method::CacheClear => "cache.clear",
            Method::CacheSnapshot => "cache.snapshot",
            Method::Reload => "reload",
        }
    }

    /// The method of that name.
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Every method's name, comma-separated (for the error that lists them).
    pub fn names() -> String {
        Method::ALL.map(Method::name).join(", ")
    }

    /// Whether only root, the daemon's user and the admin group may call it.
    pub fn is_admin(self) -> bool {
        matches!(self, Method::CacheClear | Method::CacheSnapshot | Method::Reload)
    }

    /// Whether its requests are logged at debug only (the counters cover them).
    pub fn is_quiet(self) -> bool {
        matches!(self, Method::Ping | Method::Status | Method::Metrics)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Method;

    #[test]
    fn names_map_both_ways_and_the_protocol_doc_lists_every_method_and_no_other() {
        for m in Method::ALL {
            assert_eq!(Method::from_name(m.name()), Some(m));
        }
        assert_eq!(Method::from_name("nope"), None);
        let doc = include_str!("../../docs/protocol.md");
        let documented: Vec<&str> =
            doc.lines().filter_map(|l| l.strip_prefix("### `")).filter_map(|l| l.split('`').next()).collect();
        assert_eq!(documented, Method::ALL.map(Method::name), "docs/protocol.md method headings (### `name`)");
    }
}
