//! The README's examples, run as written against the gateway its "Run it" starts (the ports
//! aside: tests use ephemeral ones). The whole-docs run comes later; these guard examples that
//! once failed as written.

use incode_gateway::proto::v1::{self, AckRequest, SubscribeRequest, subscribe_response::Response};
use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::common::*;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The gateway of the README's "Run it": the binary with the variables its `cargo run` line sets.
pub async fn readme_gateway(data_dir: &std::path::Path) -> GatewayProcess {
    let commands = shell_commands(&readme());
    let (env, _) = commands
        .iter()
        .find(|(_, words)| {
            words.first().is_some_and(|word| word == "cargo") && words.contains(&"run".to_owned())
        })
        .expect("the README starts a gateway with cargo run");
    assert!(
        env.iter()
            .any(|(name, _)| name == "INCODE_GATEWAY_OAUTH_CLIENT_ID"),
        "the README's gateway has an OAuth client: {env:?}"
    );
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    GatewayProcess::spawn_with(data_dir, &[], &env).await
}

/// The argument after `flag`, without the single quotes around it.
fn argument<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    let at = words.iter().position(|word| word == flag)?;
    Some(words.get(at + 1)?.trim_matches('\''))
}

/// A request message of the contract from its canonical JSON, as grpcurl's `-d` takes it.
fn from_json<T: prost::Message + Default>(name: &str, json: &str) -> T {
    let pool = DescriptorPool::decode(v1::FILE_DESCRIPTOR_SET).unwrap();
    let descriptor = pool.get_message_by_name(name).unwrap();
    let mut deserializer = serde_json::Deserializer::from_str(json);
    DynamicMessage::deserialize(descriptor, &mut deserializer)
        .unwrap_or_else(|error| panic!("{json} is not a {name}: {error}"))
        .transcode_to()
        .unwrap()
}

/// The README's plain-text grpcurl calls (the loopback default), in order, after its webhook
/// examples: the resume and ack sequences are ones a fresh demo log has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_plaintext_grpcurl_calls_work_on_its_demo_log() {
    let data_dir = tempfile::tempdir().unwrap();
    let gateway = readme_gateway(data_dir.path()).await;
    let commands = shell_commands(&readme());
    let http = http_client();

    // Its webhook examples, with a token of its demo client.
    let (id, secret) = commands
        .iter()
        .find_map(|(_, words)| {
            let user = argument(words, "-u")?;
            words
                .iter()
                .any(|word| word.ends_with("/oauth/token"))
                .then_some(())?;
            user.split_once(':')
        })
        .expect("the README obtains a token with curl -u");
    let token: serde_json::Value = http
        .post(format!("{}/oauth/token", gateway.base_url))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let mut posted = 0;
    for (_, words) in &commands {
        let Some(url) = words
            .iter()
            .find(|word| word.starts_with("http://localhost:8080/webhooks/"))
        else {
            continue;
        };
        let body = argument(words, "-d").expect("a webhook example has a body");
        let url = url.replace("http://localhost:8080", &gateway.base_url);
        let response = http
            .post(url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK, "{words:?}");
        posted += 1;
    }
    assert!(posted >= 2, "the README's webhook examples: {posted}");

    let mut client = gateway.client().await;
    let mut calls = 0;
    for (_, words) in &commands {
        if words.first().is_none_or(|word| word != "grpcurl")
            || !words.contains(&"-plaintext".to_owned())
            || !words.contains(&"localhost:50051".to_owned())
        {
            continue;
        }
        let method = words.last().unwrap();
        let json = argument(words, "-d").unwrap_or("{}");
        calls += 1;
        match method.rsplit('/').next().unwrap() {
            "Subscribe" => {
                let request: SubscribeRequest =
                    from_json("incode.gateway.v1.SubscribeRequest", json);
                let live = request.start.is_none() && request.consumer.is_empty();
                let mut stream = client
                    .subscribe(request)
                    .await
                    .unwrap_or_else(|status| panic!("{words:?}: {status:?}"))
                    .into_inner();
                if !live {
                    // It reaches the live tail without an error.
                    loop {
                        match next_progress(&mut stream).await {
                            Response::CaughtUp(_) => break,
                            Response::Event(_) => {}
                            other => panic!("{words:?}: {other:?}"),
                        }
                    }
                }
            }
            "Ack" => {
                let request: AckRequest = from_json("incode.gateway.v1.AckRequest", json);
                client
                    .ack(request)
                    .await
                    .unwrap_or_else(|status| panic!("{words:?}: {status:?}"));
            }
            other => panic!("a grpcurl call of {other}"),
        }
    }
    assert!(calls >= 4, "the README's plain-text grpcurl calls: {calls}");
}

/// `NAME=value` assignments, and the words of the command they apply to.
pub type ShellCommand = (Vec<(String, String)>, Vec<String>);

/// The commands of the `sh` blocks of a Markdown text, with their leading `NAME=value`
/// assignments apart: (assignments, words). Continuation lines are joined, comments dropped;
/// words are split on spaces (the commands this is used on quote nothing).
pub fn shell_commands(markdown: &str) -> Vec<ShellCommand> {
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let line = line.split(" #").next().unwrap_or("").trim_end();
        if let Some(continued) = line.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let command = std::mem::take(&mut pending);
        let mut env = Vec::new();
        let mut words = Vec::new();
        for word in command.split_whitespace() {
            match word.split_once('=') {
                Some((name, value))
                    if words.is_empty()
                        && !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_uppercase() || c == '_') =>
                {
                    env.push((name.to_owned(), value.to_owned()));
                }
                _ => words.push(word.to_owned()),
            }
        }
        if !words.is_empty() {
            commands.push((env, words));
        }
    }
    commands
}
