//! The plugin's decisions without the request path: what is stored, what answers, what waits.

use http::Request;
use serde_json::json;

use super::*;

fn cache(config: Value) -> ProxyCache {
    ProxyCache::build(1085, &config, "routes/t", &BuildEnv::default()).expect("a valid config")
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "shop.example");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

async fn fetch(cache: &ProxyCache, request: &request::Parts) -> Fetch {
    match cache.lookup(request).await {
        Lookup::Fetch(fetch) => fetch,
        Lookup::Answer(answer) => panic!("answered {}", answer.status()),
    }
}

/// Fetches `request` and offers the node's answer (`status`, `answer` headers, `body`) to
/// the cache, streaming the body through its filter; whether it kept it.
async fn offer(
    cache: &ProxyCache,
    request: &request::Parts,
    status: u16,
    answer: &[(&str, &str)],
    body: &'static [u8],
) -> bool {
    let mut fetch = fetch(cache, request).await;
    let mut answer = headers(answer);
    let Some(mut filter) = fetch.admit(StatusCode::from_u16(status).unwrap(), &mut answer) else {
        return false;
    };
    assert_eq!(
        filter.chunk(Bytes::from_static(body)),
        body,
        "the body passes unchanged"
    );
    filter.end();
    true
}

async fn status_of(cache: &ProxyCache, request: &request::Parts) -> CacheStatus {
    match cache.lookup(request).await {
        Lookup::Answer(answer) => {
            match answer
                .headers()
                .get(&X_CACHE_STATUS)
                .and_then(|v| v.to_str().ok())
            {
                Some("HIT") => CacheStatus::Hit,
                other => panic!("answered with {other:?}"),
            }
        }
        Lookup::Fetch(fetch) => fetch.status(),
    }
}

#[tokio::test]
async fn what_is_stored_follows_the_statuses_set_cookie_vary_and_cache_control() {
    let cache = cache(json!({"cache_control": true}));
    let get = |uri: &str| request("GET", uri, &[]);
    // (path, the node's status, its headers, whether the answer is stored)
    type Case<'a> = (&'a str, u16, &'a [(&'a str, &'a str)], bool);
    let cases: &[Case<'_>] = &[
        ("/plain", 200, &[], true),
        ("/moved", 301, &[], true),
        ("/error", 500, &[], false),
        ("/cookie", 200, &[("set-cookie", "s=1")], false),
        ("/star", 200, &[("vary", "*")], false),
        ("/no-store", 200, &[("cache-control", "no-store")], false),
        (
            "/private",
            200,
            &[("cache-control", "private, max-age=60")],
            false,
        ),
        ("/no-cache", 200, &[("cache-control", "no-cache")], false),
        ("/zero", 200, &[("cache-control", "max-age=0")], false),
        (
            "/fresh",
            200,
            &[("cache-control", "public, s-maxage=60")],
            true,
        ),
    ];
    for (uri, status, answer, stored) in cases {
        assert_eq!(
            offer(&cache, &get(uri), *status, answer, b"x").await,
            *stored,
            "{uri}"
        );
        let expected = if *stored {
            CacheStatus::Hit
        } else {
            CacheStatus::Miss
        };
        assert_eq!(status_of(&cache, &get(uri)).await, expected, "{uri}");
    }
}

#[tokio::test]
async fn an_authorized_request_is_stored_only_when_the_answer_says_it_may_be_shared() {
    let cache = cache(json!({"cache_control": true}));
    let authorized = |uri: &str| request("GET", uri, &[("authorization", "Bearer t")]);
    assert!(!offer(&cache, &authorized("/a"), 200, &[], b"x").await);
    assert!(
        offer(
            &cache,
            &authorized("/b"),
            200,
            &[("cache-control", "public")],
            b"x"
        )
        .await
    );
    // Without cache_control the TTL alone decides, as in APISIX.
    let plain = super::tests::cache(json!({}));
    assert!(
        offer(
            &plain,
            &authorized("/a"),
            200,
            &[("cache-control", "no-store")],
            b"x"
        )
        .await
    );
}

#[tokio::test]
async fn a_variant_answers_only_requests_that_vary_alike() {
    let cache = cache(json!({}));
    let german = request("GET", "/v", &[("accept-language", "de")]);
    assert!(
        offer(
            &cache,
            &german,
            200,
            &[("vary", "Accept-Language")],
            b"hallo"
        )
        .await
    );
    assert_eq!(status_of(&cache, &german).await, CacheStatus::Hit);
    let french = request("GET", "/v", &[("accept-language", "fr")]);
    assert_eq!(status_of(&cache, &french).await, CacheStatus::Miss);
    let none = request("GET", "/v", &[]);
    assert_eq!(status_of(&cache, &none).await, CacheStatus::Miss);
}

#[tokio::test]
async fn a_head_is_answered_from_the_get_entry_with_its_length_and_no_body() {
    let cache = cache(json!({}));
    assert!(offer(&cache, &request("GET", "/h", &[]), 200, &[], b"12345").await);
    let Lookup::Answer(answer) = cache.lookup(&request("HEAD", "/h", &[])).await else {
        panic!("a HEAD of a stored GET is a hit");
    };
    assert_eq!(answer.headers()[CONTENT_LENGTH], "5");
    assert_eq!(answer.headers()[&X_CACHE_STATUS], "HIT");
    assert!(http_body::Body::is_end_stream(answer.body()));
    // A HEAD's own answer is never stored.
    assert!(!offer(&cache, &request("HEAD", "/other", &[]), 200, &[], b"").await);
}

#[tokio::test]
async fn an_answer_that_outgrows_the_entry_bound_streams_on_unstored() {
    // 1 MiB: an entry holds at most 128 KiB.
    let cache = cache(json!({"max_size_mb": 1}));
    let mut fetch = fetch(&cache, &request("GET", "/big", &[])).await;
    let mut answer = HeaderMap::new();
    let mut filter = fetch
        .admit(StatusCode::OK, &mut answer)
        .expect("no length: captured");
    for _ in 0..200 {
        let chunk = Bytes::from(vec![b'x'; 1024]);
        assert_eq!(filter.chunk(chunk.clone()), chunk);
    }
    filter.end();
    assert_eq!(
        status_of(&cache, &request("GET", "/big", &[])).await,
        CacheStatus::Miss
    );
    // A length that says so at once is not even captured.
    let mut fetch = fetch_again(&cache).await;
    let mut answer = headers(&[("content-length", "200000")]);
    assert!(fetch.admit(StatusCode::OK, &mut answer).is_none());
}

async fn fetch_again(cache: &ProxyCache) -> Fetch {
    fetch(cache, &request("GET", "/big", &[])).await
}

#[tokio::test]
async fn bypass_variables_and_other_methods_never_read_the_cache() {
    let cache = cache(json!({"cache_bypass": ["$arg_nocache"]}));
    assert!(offer(&cache, &request("GET", "/b", &[]), 200, &[], b"x").await);
    assert_eq!(
        status_of(&cache, &request("GET", "/b", &[])).await,
        CacheStatus::Hit
    );
    let bypassed = request("GET", "/b?nocache=1", &[]);
    assert_eq!(status_of(&cache, &bypassed).await, CacheStatus::Bypass);
    let post = request("POST", "/b", &[]);
    assert_eq!(status_of(&cache, &post).await, CacheStatus::Bypass);
}

#[tokio::test]
async fn purge_needs_the_key_and_names_the_entry_of_its_url() {
    let keyed = cache(json!({"purge_key": "0123456789"}));
    assert!(offer(&keyed, &request("GET", "/p", &[]), 200, &[], b"x").await);
    let purge = |key: Option<&str>| {
        let headers: Vec<(&str, &str)> = key.map(|k| ("x-purge-key", k)).into_iter().collect();
        request("PURGE", "/p", &headers)
    };
    let status = |lookup: Lookup| match lookup {
        Lookup::Answer(answer) => answer.status().as_u16(),
        Lookup::Fetch(_) => panic!("a PURGE is never forwarded"),
    };
    assert_eq!(status(keyed.lookup(&purge(None)).await), 401);
    assert_eq!(status(keyed.lookup(&purge(Some("9876543210"))).await), 403);
    assert_eq!(status(keyed.lookup(&purge(Some("0123456789"))).await), 200);
    assert_eq!(status(keyed.lookup(&purge(Some("0123456789"))).await), 404);
    let unkeyed = cache(json!({}));
    assert_eq!(
        status(unkeyed.lookup(&purge(Some("0123456789"))).await),
        403
    );
}

#[tokio::test]
async fn a_miss_waits_for_the_request_fetching_its_key_then_hits() {
    let cache = Arc::new(cache(json!({})));
    let leader = fetch(&cache, &request("GET", "/w", &[])).await;
    let waiter = {
        let cache = Arc::clone(&cache);
        tokio::spawn(async move { status_of(&cache, &request("GET", "/w", &[])).await })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "the second miss waits for the first");
    let mut leader = leader;
    let mut answer = HeaderMap::new();
    let mut filter = leader.admit(StatusCode::OK, &mut answer).expect("storable");
    filter.chunk(Bytes::from_static(b"x"));
    filter.end();
    assert_eq!(waiter.await.unwrap(), CacheStatus::Hit);
}
