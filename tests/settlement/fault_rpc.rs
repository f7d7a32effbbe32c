//! The RPC endpoint disappears for a while: a small TCP proxy between the engine and anvil
//! drops every connection while paused. Serving continues on channels whose mirror is fresh
//! enough (`Freshness`, 2 s here), stops being "fresh" once the outage outlasts that, and
//! claims resume by themselves when the endpoint returns; nothing is claimed twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use alloy::providers::{Provider, ProviderBuilder};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use x402_upto::chain::tx::{TxPolicy, TxSender};
use x402_upto::settlement::{
    ClaimJournal, Freshness, Settlement, SettlementConfig, Watcher, WatcherConfig, unix_now,
};
use x402_upto::{Durability, Ledger, SledOptions, SledStore};
use x402_upto_testkit::devnet::Devnet;
use x402_upto_testkit::offchain::signed_voucher;
use x402_upto_testkit::settlement_fixture::SettlementFixture;

const DEPOSIT: u128 = 1_000_000;
const PRICE: u128 = 10_000;

/// Forwards 127.0.0.1:<port> to `upstream`; while paused, closes every connection.
struct Proxy {
    port: u16,
    paused: Arc<AtomicBool>,
    cut: Arc<parking_lot::Mutex<CancellationToken>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let paused = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(parking_lot::Mutex::new(CancellationToken::new()));
        let (p, c) = (Arc::clone(&paused), Arc::clone(&cut));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if p.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let token = c.lock().clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Self { port, paused, cut }
    }

    fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        let mut cut = self.cut.lock();
        cut.cancel();
        *cut = CancellationToken::new();
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_continues_on_fresh_mirrors_during_an_rpc_outage_and_claims_resume_after_it() {
    let kit = SettlementFixture::start(DEPOSIT).await;
    let id = kit.deposit(1, DEPOSIT).await;
    let (net, payer, authorizer, config) = (
        &kit.net,
        kit.payer.clone(),
        kit.authorizer.clone(),
        kit.config(1),
    );

    let upstream = net
        .endpoint_url()
        .host_str()
        .map(|h| format!("{h}:{}", net.endpoint_url().port().unwrap_or(8545)))
        .expect("host");
    let proxy = Proxy::start(upstream).await;
    let url: reqwest::Url = format!("http://127.0.0.1:{}", proxy.port)
        .parse()
        .expect("url");
    let via_proxy = ProviderBuilder::new().connect_http(url).erased();
    let sender = TxSender::new(
        via_proxy.clone(),
        net.key(5).expect("key"),
        net.chain_id,
        TxPolicy {
            attempt_timeout: Duration::from_secs(2),
            total_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(20),
            ..TxPolicy::default()
        },
    );
    let client =
        Arc::new(net.escrow_client_over(via_proxy.clone(), Arc::new(sender), Some(authorizer)));
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        SledStore::open(dir.path(), SledOptions::with_durability(Durability::Group))
            .expect("store"),
    );
    let ledger = Ledger::new(net.domain());
    ledger.upsert_from_chain(
        config,
        client.channel_state(id).await.expect("read"),
        unix_now(),
    );
    let handle = Settlement::new(
        ledger.clone(),
        Arc::clone(&client),
        ClaimJournal::open(&store).expect("journal"),
        SettlementConfig {
            claim_threshold: 1,
            tick: Duration::from_millis(100),
            retry_backoff: Duration::from_secs(60),
            ..SettlementConfig::default()
        },
    )
    .spawn();
    let freshness = Freshness::new(Duration::from_secs(2));
    let stop = CancellationToken::new();
    let head = via_proxy.get_block_number().await.expect("head");
    let watcher = Watcher::new(
        Arc::clone(&client),
        ledger.clone(),
        WatcherConfig {
            confirmations: 0,
            poll: Duration::from_millis(100),
            ..WatcherConfig::default()
        },
        Some(handle.waker()),
        head + 1,
    )
    .with_freshness(freshness.clone())
    .spawn(stop.clone());

    let mut charged = 0u128;
    let serve = |charged: u128| {
        let max = charged + PRICE;
        let voucher = signed_voucher(&payer, ledger.domain(), id, max);
        ledger
            .verify_and_reserve(voucher, PRICE)
            .expect("accepted")
            .commit(6_000, unix_now())
            .expect("within price")
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(freshness.is_fresh(&ledger, &id, unix_now()));

    proxy.pause();
    // Within the freshness window the channel is served (and made durable) as usual.
    for _ in 0..5 {
        assert!(freshness.is_fresh(&ledger, &id, unix_now()));
        let staged = serve(charged);
        x402_upto::store::persist(store.as_ref(), staged)
            .await
            .expect("durable");
        charged += 6_000;
    }
    handle.wake();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert!(
        !freshness.is_fresh(&ledger, &id, unix_now()),
        "a 3.5 s outage is past the 2 s freshness window"
    );
    assert_eq!(
        ledger.snapshot(&id).expect("known").total_claimed,
        0,
        "nothing could be claimed during the outage"
    );

    proxy.resume();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let onchain = net_total_claimed(net, id).await;
        if onchain == charged {
            break;
        }
        assert!(onchain <= charged);
        assert!(
            tokio::time::Instant::now() < deadline,
            "claims did not resume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(freshness.is_fresh(&ledger, &id, unix_now()));
    assert_eq!(ledger.snapshot(&id).expect("known").total_claimed, charged);
    stop.cancel();
    let _ = watcher.await;
    handle.shutdown().await;
}

async fn net_total_claimed(net: &Devnet, id: x402_upto::typed_data::ChannelId) -> u128 {
    x402_upto::chain::bindings::UptoEscrow::new(net.escrow, net.provider.clone())
        .channels(id.0)
        .call()
        .await
        .expect("direct read")
        .totalClaimed
}
