//! [`PaidTools`]: prices chosen tools of an MCP server and runs each paid call through the
//! engine, exactly as the HTTP layer runs a paid request (`src/server/mod.rs`, `handle`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use std::future::Future;

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CallToolResult, ClientRequest,
    ContentBlock, MetaObject, ProtocolVersion, ServerConfig, ServerResult,
};
use rmcp::service::{NotificationContext, RequestContext, RoleServer, Service, ServiceRole};
use rmcp::{ErrorData as McpError, model::ErrorCode};
use serde_json::{Map, Value, json};

use super::{PAYMENT_EXTENSION, PAYMENT_META, PAYMENT_REQUIRED_RESULT, PAYMENT_RESPONSE_META};
use crate::engine::{Authorized, Engine, Paid, Refusal};
use crate::reason::Reason;
use crate::server::{Charge, record_settled};
use crate::store::Store;
use crate::telemetry;
use crate::wire::{PaymentRequired, ResourceInfo, SettleResponse, encode_header};

/// What one paid tool costs at most, and how its offer describes it.
#[derive(Clone, Debug)]
pub struct ToolPrice {
    /// The most one call may cost (the voucher pays for it; the tool charges less with
    /// [`Charge::set`]).
    pub max: u128,
    /// `resource.description` of the offer.
    pub description: Option<String>,
    /// `resource.mimeType` of the offer.
    pub mime_type: Option<String>,
}

impl ToolPrice {
    /// Up to `max` atomic units per call.
    pub fn up_to(max: u128) -> Self {
        Self {
            max,
            description: None,
            mime_type: None,
        }
    }
    /// `resource.description` of the offer.
    pub fn with_description(mut self, d: impl Into<String>) -> Self {
        self.description = Some(d.into());
        self
    }
    /// `resource.mimeType` of the offer.
    pub fn with_mime_type(mut self, m: impl Into<String>) -> Self {
        self.mime_type = Some(m.into());
        self
    }
}

/// An MCP server whose priced tools must be paid for; every other request (and every tool
/// without a price) goes to the inner server unchanged.
///
/// ```no_run
/// # use x402_upto::mcp::{PaidTools, ToolPrice};
/// # fn demo<H: rmcp::Service<rmcp::RoleServer>>(tools: H, engine: x402_upto::engine::Engine<x402_upto::SledStore>) {
/// // The tool takes `Extension(charge): Extension<Charge>` and calls `charge.set(actual)`.
/// let server = PaidTools::new(tools, engine).price("search", ToolPrice::up_to(1000));
/// # }
/// ```
///
/// A paid call: the payment in `params._meta["x402/payment"]` is checked and holds the
/// channel; the tool runs with a [`Charge`] in its request extensions (unset: the full
/// price); the charge is durable before the result leaves, with the `SettleResponse` in
/// `_meta["x402/payment-response"]`. A tool error (`isError: true` or a JSON-RPC error)
/// charges nothing. A result that is not a finished tool result (input required, a task) is
/// passed on uncharged. A call that advertises `org.x402/payment` gets the extension binding's
/// `payment_required` result; any other the tool-result binding.
pub struct PaidTools<H, S> {
    shared: Arc<Shared<H, S>>,
}

struct Shared<H, S> {
    inner: H,
    engine: Engine<S>,
    prices: HashMap<String, ToolPrice>,
}

impl<H, S> Clone for PaidTools<H, S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<H, S> std::fmt::Debug for PaidTools<H, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaidTools")
            .field("prices", &self.shared.prices)
            .finish_non_exhaustive()
    }
}

impl<H, S> PaidTools<H, S> {
    /// `inner` with no tool priced yet.
    pub fn new(inner: H, engine: Engine<S>) -> Self {
        Self {
            shared: Arc::new(Shared {
                inner,
                engine,
                prices: HashMap::new(),
            }),
        }
    }

    /// Prices the tool `name` (call before serving: the wrapper is shared once cloned).
    pub fn price(mut self, name: impl Into<String>, price: ToolPrice) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.prices.insert(name.into(), price);
        } else {
            tracing::error!("PaidTools::price after the wrapper was cloned: ignored");
        }
        self
    }

    /// The engine the paid calls run on.
    pub fn engine(&self) -> &Engine<S> {
        &self.shared.engine
    }
}

/// Whether the request advertises the `org.x402/payment` extension (per request, or for a
/// session at `initialize`).
fn wants_extension(context: &RequestContext<RoleServer>) -> bool {
    context
        .client_capabilities()
        .and_then(|c| c.extensions)
        .is_some_and(|e| e.contains_key(PAYMENT_EXTENSION))
}

/// Whether results to this request keep the pre-2026-07-28 shape (no `resultType`).
fn legacy_peer(context: &RequestContext<RoleServer>) -> bool {
    context
        .protocol_version()
        .is_none_or(|v| v.as_str() < ProtocolVersion::V_2026_07_28.as_str())
}

/// How a paid call's refusals are answered.
#[derive(Clone, Copy)]
struct Binding {
    /// The extension binding (`payment_required` results).
    extension: bool,
    /// The peer predates `resultType`.
    legacy: bool,
}

impl Binding {
    /// The payment-required answer carrying `required`, the human-readable `message` (a
    /// second text block in the tool-result binding, `message` in the extension's result) and
    /// a failed or deposit-only receipt, if any.
    fn payment_required(
        self,
        required: &PaymentRequired,
        message: &str,
        receipt: Option<&SettleResponse>,
    ) -> ServerResult {
        let required_json = serde_json::to_value(required).unwrap_or(Value::Null);
        let meta = receipt.map(receipt_meta);
        if self.extension {
            let mut result = json!({
                "resultType": PAYMENT_REQUIRED_RESULT,
                "paymentRequired": required_json,
                "message": message,
            });
            if let Some(meta) = meta {
                result["_meta"] = Value::Object(meta.0);
            }
            return ServerResult::CustomResult(rmcp::model::CustomResult::new(result));
        }
        let mut result = CallToolResult::error(vec![
            ContentBlock::text(required_json.to_string()),
            ContentBlock::text(message),
        ]);
        result.structured_content = Some(required_json);
        result.meta = meta;
        self.finish(ServerResult::CallToolResult(result))
    }

    /// A result built here gets the shape the peer's protocol version expects, as the
    /// inner server's results do.
    fn finish(self, mut result: ServerResult) -> ServerResult {
        if self.legacy {
            result.strip_result_type_for_legacy_peer();
        }
        result
    }
}

/// `_meta` with the `SettleResponse` under `x402/payment-response`.
fn receipt_meta(settled: &SettleResponse) -> MetaObject {
    let mut meta = MetaObject::new();
    meta.insert(
        PAYMENT_RESPONSE_META.into(),
        serde_json::to_value(settled).unwrap_or(Value::Null),
    );
    meta
}

fn rejected(reason: Option<Reason>) {
    if let Some(reason) = reason {
        metrics::counter!(telemetry::PAYMENTS_REJECTED, "reason" => reason.as_str()).increment(1);
    }
}

impl<H, S> Shared<H, S>
where
    H: Service<RoleServer>,
    S: Store + 'static,
{
    /// The answer to an engine refusal: a payment-required result for a 402; a JSON-RPC
    /// error for a refusal that is not about the payment (503: store or chain unavailable).
    fn refused(
        &self,
        binding: Binding,
        refusal: &Refusal,
        resource: &ResourceInfo,
        price: u128,
    ) -> Result<ServerResult, McpError> {
        rejected(refusal.reason);
        match &refusal.required {
            Some(required) => {
                Ok(binding.payment_required(required, &refusal.message, refusal.response.as_ref()))
            }
            None if refusal.response.is_some() => {
                // A failed settlement: nothing charged, the tool's output withheld. The
                // offer again (the client may retry), and the failed receipt.
                let required = self
                    .engine
                    .payment_required(resource, price, refusal.reason);
                Ok(
                    binding.payment_required(
                        &required,
                        &refusal.message,
                        refusal.response.as_ref(),
                    ),
                )
            }
            None => Err(McpError::new(
                ErrorCode::INTERNAL_ERROR,
                refusal.message.clone(),
                Some(json!({"status": refusal.status.as_u16(), "reason": refusal.code()})),
            )),
        }
    }

    /// One paid call: authorize, `run` the tool, settle. `extension`: whether this front end
    /// can answer with the extension binding.
    async fn paid_call<F, Fut>(
        &self,
        mut params: CallToolRequestParams,
        mut context: RequestContext<RoleServer>,
        tool: &ToolPrice,
        extension: bool,
        run: F,
    ) -> Result<ServerResult, McpError>
    where
        F: FnOnce(CallToolRequestParams, RequestContext<RoleServer>) -> Fut,
        Fut: Future<Output = Result<ServerResult, McpError>>,
    {
        let binding = Binding {
            extension: extension && wants_extension(&context),
            legacy: legacy_peer(&context),
        };
        let resource = ResourceInfo {
            url: super::tool_url(&params.name),
            description: tool.description.clone(),
            mime_type: tool.mime_type.clone(),
        };
        let price = tool.max;
        // The payment is the engine's, not the tool's: it is taken out of the request. The
        // engine reads the header form, so the JSON is carried as one (the 16 KiB bound and
        // every check apply unchanged).
        let payment = context.meta.remove(PAYMENT_META);
        if let Some(meta) = params.meta.as_mut() {
            meta.remove(PAYMENT_META);
        }
        let header = payment.map(|p| encode_header(&p).into_bytes());
        let started = std::time::Instant::now();
        let paid = match self
            .engine
            .authorize(header.as_deref(), price, &resource)
            .await
        {
            Err(refusal) => return self.refused(binding, &refusal, &resource, price),
            Ok(Authorized::Refunded(settled)) => {
                metrics::counter!(telemetry::PAYMENTS_ACCEPTED, "kind" => "refund").increment(1);
                let mut result = CallToolResult::success(vec![ContentBlock::text(
                    serde_json::to_string(&settled).unwrap_or_default(),
                )]);
                result.meta = Some(receipt_meta(&settled));
                return Ok(binding.finish(ServerResult::CallToolResult(result)));
            }
            Ok(Authorized::Paid(paid)) => paid,
        };
        metrics::counter!(telemetry::PAYMENTS_ACCEPTED, "kind" => paid.kind()).increment(1);
        let authorizing = started.elapsed();
        let charge = Charge::new(price);
        context.extensions.insert(charge.clone());
        let ran = run(params, context).await;
        let mut result = match ran {
            Ok(ServerResult::CallToolResult(result)) if result.is_error != Some(true) => result,
            Ok(other) => {
                // A tool error, or no finished result yet: charged nothing.
                return Ok(self.uncharged(paid, other).await);
            }
            Err(mut error) => {
                if let Some(receipt) = self.engine.release_unserved(paid).await {
                    // The deposit is on chain: the client learns of it from the error's data.
                    let data = error.data.get_or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(map) = data {
                        map.insert(
                            PAYMENT_RESPONSE_META.into(),
                            serde_json::to_value(&receipt).unwrap_or(Value::Null),
                        );
                    }
                }
                return Err(error);
            }
        };
        let actual = charge.get().unwrap_or(price);
        let settling = std::time::Instant::now();
        match self.engine.settle(paid, actual).await {
            Ok(settled) => {
                metrics::histogram!(telemetry::PAYMENT_OVERHEAD)
                    .record((authorizing + settling.elapsed()).as_secs_f64());
                record_settled(&settled);
                let mut meta = result.meta.take().unwrap_or_default();
                meta.insert(
                    PAYMENT_RESPONSE_META.into(),
                    serde_json::to_value(&settled).unwrap_or(Value::Null),
                );
                result.meta = Some(meta);
                Ok(ServerResult::CallToolResult(result))
            }
            // The tool's output is dropped here: a failed settlement returns none of it.
            Err(refusal) => self.refused(binding, &refusal, &resource, price),
        }
    }

    /// A tool error or an unfinished result: nothing is charged. A deposit that came with
    /// the call is on chain already; its receipt (charged 0) goes into the result's `_meta`,
    /// or the client would deposit again on its next call.
    async fn uncharged(&self, paid: Paid, mut result: ServerResult) -> ServerResult {
        let Some(receipt) = self.engine.release_unserved(paid).await else {
            return result;
        };
        if let ServerResult::CallToolResult(r) = &mut result {
            r.meta.get_or_insert_with(MetaObject::new).insert(
                PAYMENT_RESPONSE_META.into(),
                serde_json::to_value(&receipt).unwrap_or(Value::Null),
            );
        }
        result
    }
}

/// Runs a paid call on its own task: it finishes even if the peer goes away or the call is
/// dropped (a deposit already sent is still credited, work already done is still charged
/// durably). A panic is a JSON-RPC internal error.
async fn finish_on_drop<F>(call: F) -> Result<ServerResult, McpError>
where
    F: Future<Output = Result<ServerResult, McpError>> + Send + 'static,
{
    match tokio::spawn(call).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::error!(error = %e, "a paid tool call panicked");
            Err(McpError::internal_error("the paid tool call failed", None))
        }
    }
}

impl<H, S> Service<RoleServer> for PaidTools<H, S>
where
    H: Service<RoleServer>,
    S: Store + 'static,
{
    async fn handle_request(
        &self,
        request: <RoleServer as ServiceRole>::PeerReq,
        context: RequestContext<RoleServer>,
    ) -> Result<<RoleServer as ServiceRole>::Resp, McpError> {
        let call = match request {
            ClientRequest::CallToolRequest(call)
                if self.shared.prices.contains_key(call.params.name.as_ref()) =>
            {
                call
            }
            other => return self.shared.inner.handle_request(other, context).await,
        };
        let shared = Arc::clone(&self.shared);
        finish_on_drop(async move {
            let Some(tool) = shared.prices.get(call.params.name.as_ref()).cloned() else {
                return Err(McpError::internal_error("unpriced tool", None));
            };
            let runner = Arc::clone(&shared);
            let run = move |params, context| async move {
                let call = ClientRequest::CallToolRequest(CallToolRequest::new(params));
                runner.inner.handle_request(call, context).await
            };
            shared
                .paid_call(call.params, context, &tool, true, run)
                .await
        })
        .await
    }

    async fn handle_notification(
        &self,
        notification: <RoleServer as ServiceRole>::PeerNot,
        context: NotificationContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.shared
            .inner
            .handle_notification(notification, context)
            .await
    }

    fn get_info(&self) -> ServerConfig {
        let mut info = self.shared.inner.get_info();
        info.capabilities
            .extensions
            .get_or_insert_with(Default::default)
            .insert(PAYMENT_EXTENSION.into(), Map::new());
        info
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        self.shared.inner.supported_protocol_versions()
    }
}

/// [`PaidTools`] as an rmcp `ServerHandler`, for the transports that take only a handler
/// (rmcp's streamable HTTP server, `StreamableHttpService`): [`PaidTools::into_handler`].
///
/// A handler's `call_tool` can answer only a tool result (or an unfinished one), not the
/// extension binding's `payment_required` result, so this front end speaks the tool-result
/// binding only and does not advertise `org.x402/payment` (the spec's binding selection then
/// picks the tool-result binding for every client). Everything but `tools/call` of a priced
/// tool is the inner handler's.
pub struct PaidToolHandler<H, S>(PaidTools<H, S>);

impl<H, S> Clone for PaidToolHandler<H, S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<H, S> std::fmt::Debug for PaidToolHandler<H, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PaidToolHandler").field(&self.0).finish()
    }
}

impl<H, S> PaidTools<H, S> {
    /// This wrapper as a `ServerHandler` (tool-result binding only; see [`PaidToolHandler`]).
    pub fn into_handler(self) -> PaidToolHandler<H, S> {
        PaidToolHandler(self)
    }
}

impl<H, S> rmcp::ServerHandler for PaidToolHandler<H, S>
where
    H: rmcp::ServerHandler,
    S: Store + 'static,
{
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let shared = &self.0.shared;
        let Some(tool) = shared.prices.get(request.name.as_ref()).cloned() else {
            return shared.inner.call_tool(request, context).await;
        };
        let shared = Arc::clone(shared);
        let answer = finish_on_drop(async move {
            let runner = Arc::clone(&shared);
            let run = move |params, context| async move {
                runner
                    .inner
                    .call_tool(params, context)
                    .await
                    .map(ServerResult::from)
            };
            shared.paid_call(request, context, &tool, false, run).await
        })
        .await?;
        match answer {
            ServerResult::CallToolResult(result) => Ok(CallToolResponse::Complete(result)),
            ServerResult::InputRequiredResult(result) => {
                Ok(CallToolResponse::InputRequired(result))
            }
            ServerResult::CreateTaskResult(result) => Ok(CallToolResponse::Task(result)),
            _ => Err(McpError::internal_error("unexpected tool answer", None)),
        }
    }

    async fn list_tools(
        &self,
        request: Option<rmcp::model::PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, McpError> {
        self.0.shared.inner.list_tools(request, context).await
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        self.0.shared.inner.get_tool(name)
    }

    async fn list_prompts(
        &self,
        request: Option<rmcp::model::PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListPromptsResult, McpError> {
        self.0.shared.inner.list_prompts(request, context).await
    }

    async fn get_prompt(
        &self,
        request: rmcp::model::GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetPromptResponse, McpError> {
        self.0.shared.inner.get_prompt(request, context).await
    }

    async fn list_resources(
        &self,
        request: Option<rmcp::model::PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourcesResult, McpError> {
        self.0.shared.inner.list_resources(request, context).await
    }

    async fn list_resource_templates(
        &self,
        request: Option<rmcp::model::PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourceTemplatesResult, McpError> {
        self.0
            .shared
            .inner
            .list_resource_templates(request, context)
            .await
    }

    async fn read_resource(
        &self,
        request: rmcp::model::ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, McpError> {
        self.0.shared.inner.read_resource(request, context).await
    }

    async fn complete(
        &self,
        request: rmcp::model::CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CompleteResult, McpError> {
        self.0.shared.inner.complete(request, context).await
    }

    fn get_info(&self) -> ServerConfig {
        self.0.shared.inner.get_info()
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        rmcp::ServerHandler::supported_protocol_versions(&self.0.shared.inner)
    }
}
