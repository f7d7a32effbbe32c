//! End to end on a real EVM (anvil): deploy the committed artifacts, open a channel with an
//! ERC-3009 deposit signed in Rust, serve two requests through the ledger, and have the escrow
//! accept the ledger's claims through `claim` (by the receiver) and `claimWithSignature` (a
//! `ClaimBatch` signed in Rust, relayed by a third party), then `settle` to the receiver.
//!
//! Needs the anvil binary: `<repo>/.tools/bin/anvil` (installed by `bash scripts/tools.sh`) or
//! the path in `X402_UPTO_ANVIL`. A missing binary fails the test; it is never skipped.

use std::path::PathBuf;
use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::aliases::U40;
use alloy_primitives::{B256, Bytes, U256};
use alloy_sol_types::SolStruct;
use x402_upto::chain::bindings::{Erc3009DepositCollector, IUptoEscrow, MockUSDC, UptoEscrow};
use x402_upto::ledger::OnchainState;
use x402_upto::typed_data::{
    ChannelConfig, ChannelId, EscrowDomain, ReceiveWithAuthorization, erc3009_collector_data,
    erc3009_deposit_nonce, sign_claim_batch, sign_receive_with_authorization, sign_voucher,
    token_domain,
};
use x402_upto::verify::SignedVoucher;
use x402_upto::{Ledger, Receipt};
use x402_upto_testkit::devnet::mined;

const DEPOSIT: u128 = 100_000;
const PRICE: u128 = 5_000;

fn anvil() -> AnvilInstance {
    let path = std::env::var_os("X402_UPTO_ANVIL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/anvil"));
    assert!(
        path.exists(),
        "anvil not found at {}: run `bash scripts/tools.sh` (or set X402_UPTO_ANVIL to an anvil binary)",
        path.display()
    );
    Anvil::new().path(path).try_spawn().expect("anvil starts")
}

fn provider(anvil: &AnvilInstance, signer: &PrivateKeySigner) -> DynProvider {
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer.clone()))
        .connect_http(anvil.endpoint_url());
    // Anvil mines at once; the default 250 ms receipt polling would dominate the test.
    provider
        .client()
        .set_poll_interval(Duration::from_millis(10));
    provider.erased()
}

async fn onchain(
    escrow: &UptoEscrow::UptoEscrowInstance<DynProvider>,
    id: ChannelId,
) -> OnchainState {
    let state = escrow.channels(id.0).call().await.expect("channels()");
    OnchainState {
        balance: state.balance,
        total_claimed: state.totalClaimed,
        ..Default::default()
    }
}

/// Serves one paid request of maximum price `PRICE` that actually costs `actual`.
fn serve(
    ledger: &Ledger,
    payer_authorizer: &PrivateKeySigner,
    id: ChannelId,
    actual: u128,
) -> Receipt {
    let charged = ledger.snapshot(&id).expect("channel known").charged;
    let max = charged + PRICE;
    let sig = sign_voucher(payer_authorizer, ledger.domain(), id, max).expect("sign voucher");
    let voucher = SignedVoucher {
        channel_id: id,
        max_claimable: max,
        signature: Bytes::from(sig.as_bytes()),
    };
    let reservation = ledger
        .verify_and_reserve(voucher, PRICE)
        .expect("voucher accepted");
    let staged = reservation.commit(actual, 1).expect("within price");
    staged.apply().expect("held")
}

#[tokio::test]
async fn the_escrow_accepts_claims_built_from_the_ledger() {
    let anvil = anvil();
    let keys: Vec<PrivateKeySigner> = anvil
        .keys()
        .iter()
        .take(5)
        .map(|k| PrivateKeySigner::from(k.clone()))
        .collect();
    let [
        deployer,
        payer,
        payer_authorizer,
        receiver,
        receiver_authorizer,
    ] = &keys[..]
    else {
        panic!("anvil has at least 5 accounts");
    };
    let relay = provider(&anvil, deployer);

    let usdc = MockUSDC::deploy(relay.clone())
        .await
        .expect("deploy MockUSDC");
    let escrow = UptoEscrow::deploy(relay.clone())
        .await
        .expect("deploy UptoEscrow");
    let collector = Erc3009DepositCollector::deploy(relay.clone(), *escrow.address())
        .await
        .expect("deploy collector");
    let receipt = usdc
        .mint(payer.address(), U256::from(DEPOSIT))
        .send()
        .await
        .expect("mint")
        .get_receipt()
        .await;
    assert!(receipt.expect("mint receipt").status());

    let domain = EscrowDomain::new(anvil.chain_id(), *escrow.address());
    let config = ChannelConfig {
        payer: payer.address(),
        payerAuthorizer: payer_authorizer.address(),
        receiver: receiver.address(),
        receiverAuthorizer: receiver_authorizer.address(),
        token: *usdc.address(),
        withdrawDelay: U40::from(900u64),
        salt: B256::repeat_byte(0x42),
    };
    let id = domain.channel_id(&config);
    let onchain_config = IUptoEscrow::ChannelConfig::from(&config);
    assert_eq!(
        escrow
            .getChannelId(onchain_config.clone())
            .call()
            .await
            .expect("getChannelId"),
        id.0
    );

    // Deposit: the payer signs ERC-3009 receiveWithAuthorization to the collector, in Rust.
    let token = usdc.eip712Domain().call().await.expect("token domain");
    let token_domain = token_domain(
        &token.name,
        &token.version,
        anvil.chain_id(),
        *usdc.address(),
    );
    let salt = B256::repeat_byte(0x07);
    let authorization = ReceiveWithAuthorization {
        from: payer.address(),
        to: *collector.address(),
        value: U256::from(DEPOSIT),
        validAfter: U256::ZERO,
        validBefore: U256::from(u64::MAX),
        nonce: erc3009_deposit_nonce(id, salt),
    };
    let sig =
        sign_receive_with_authorization(payer, &token_domain, &authorization).expect("sign 3009");
    let data = erc3009_collector_data(U256::ZERO, U256::from(u64::MAX), salt, &sig.as_bytes());
    let deposit = escrow.deposit(onchain_config, DEPOSIT, *collector.address(), data);
    mined(deposit).await;

    let ledger = Ledger::new(domain.clone());
    ledger.upsert_from_chain(config.clone(), onchain(&escrow, id).await, 1);
    assert_eq!(ledger.snapshot(&id).map(|s| s.balance), Some(DEPOSIT));

    // Request 1 costs 3000 of 5000: the receiver claims the charged 3000 with `claim`.
    assert_eq!(
        serve(&ledger, payer_authorizer, id, 3_000).snapshot.charged,
        3_000
    );
    let claimable = ledger.claimable();
    assert_eq!(claimable.len(), 1);
    let digest = escrow
        .getVoucherDigest(id.0, claimable[0].max_claimable)
        .call()
        .await
        .expect("digest");
    assert_eq!(
        digest,
        domain.voucher_digest(id, claimable[0].max_claimable)
    );
    let as_receiver = UptoEscrow::new(*escrow.address(), provider(&anvil, receiver));
    let rows = vec![IUptoEscrow::VoucherClaim::from(&claimable[0])];
    mined(as_receiver.claim(rows)).await;
    let state = onchain(&escrow, id).await;
    assert_eq!(state.total_claimed, 3_000);
    ledger
        .apply_claim(&id, state.total_claimed, 2)
        .expect("known");

    // Request 2 (voucher 3000 + 5000 = 8000) costs 3000: a relay submits a signed ClaimBatch.
    assert_eq!(
        serve(&ledger, payer_authorizer, id, 3_000).snapshot.charged,
        6_000
    );
    let claimable = ledger.claimable();
    assert_eq!(
        (claimable[0].claim_total, claimable[0].max_claimable),
        (6_000, 8_000)
    );
    let rows = vec![IUptoEscrow::VoucherClaim::from(&claimable[0])];
    let entries = vec![claimable[0].entry()];
    let batch_digest = escrow
        .getClaimBatchDigest(rows.clone())
        .call()
        .await
        .expect("batch digest");
    assert_eq!(batch_digest, domain.claim_batch_digest(&entries));
    assert_eq!(
        batch_digest,
        x402_upto::typed_data::ClaimBatch {
            claims: entries.clone()
        }
        .eip712_signing_hash(&domain.eip712_domain())
    );
    let batch_sig = sign_claim_batch(receiver_authorizer, &domain, &entries).expect("sign batch");
    let relayed = escrow.claimWithSignature(rows, Bytes::from(batch_sig.as_bytes()));
    mined(relayed).await;
    assert_eq!(onchain(&escrow, id).await.total_claimed, 6_000);

    // Settle sweeps the claimed 6000 to the receiver.
    let settle = escrow.settle(receiver.address(), *usdc.address());
    mined(settle).await;
    let balance = usdc
        .balanceOf(receiver.address())
        .call()
        .await
        .expect("balanceOf");
    assert_eq!(balance, U256::from(6_000u64));
    assert_eq!(
        usdc.balanceOf(*escrow.address())
            .call()
            .await
            .expect("balanceOf"),
        U256::from(DEPOSIT - 6_000)
    );
}
