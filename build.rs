//! Generates the Rust protocol messages and the grpcio service glue from `proto/` at build
//! time. Messages come from protobuf-codegen with its pure-Rust parser, so no `protoc` is
//! needed. grpcio-compiler only speaks protobuf 2, so the small amount of grpcio glue (method
//! descriptors, a client, a service trait) is written here from the parsed service definitions.
//!
//! Without the `grpc` feature (the fuzz targets' build) nothing uses the protocol: nothing is
//! generated and the protobuf build dependencies are not even compiled.

fn main() {
    #[cfg(feature = "grpc")]
    proto_gen::generate();
    // With no rerun directive at all, cargo would rerun this script (and rebuild the crate)
    // whenever any file of the package changes.
    #[cfg(not(feature = "grpc"))]
    println!("cargo:rerun-if-changed=build.rs");
}

/// Code generation from `proto/`, needed only with the `grpc` feature.
#[cfg(feature = "grpc")]
mod proto_gen {
    use std::fmt::Write as _;
    use std::path::{Path, PathBuf};

    const PROTO_DIR: &str = "proto";
    const PROTO_FILE: &str = "proto/nodelink.proto";

    pub fn generate() {
        println!("cargo:rerun-if-changed={PROTO_DIR}");
        let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

        protobuf_codegen::Codegen::new()
            .pure()
            .include(PROTO_DIR)
            .input(PROTO_FILE)
            .out_dir(&out_dir)
            .run_from_script();
        strip_inner_attributes(&out_dir.join("nodelink.rs"));

        let parsed = protobuf_parse::Parser::new()
            .pure()
            .include(PROTO_DIR)
            .input(PROTO_FILE)
            .parse_and_typecheck()
            .expect("proto/ parses");
        let mut glue = String::new();
        for file in &parsed.file_descriptors {
            let module = Path::new(file.name())
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("proto file has a name")
                .to_string();
            for service in &file.service {
                write_service(&mut glue, file.package(), &module, service);
            }
        }
        std::fs::write(out_dir.join("grpc_glue.rs"), glue).expect("OUT_DIR is writable");
    }

    /// `include!` rejects inner attributes and inner doc comments, which the generated file opens
    /// with; `src/proto.rs` states the lint allowances on the module instead.
    fn strip_inner_attributes(path: &Path) {
        let text = std::fs::read_to_string(path).expect("generated file is readable");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(path, kept.join("\n")).expect("generated file is writable");
    }

    /// The Rust type path of a fully qualified proto message name such as `.pb.TaskResponse`.
    fn rust_type(module: &str, package: &str, proto_type: &str) -> String {
        let local = proto_type
            .trim_start_matches('.')
            .trim_start_matches(package)
            .trim_start_matches('.');
        format!("super::{module}::{}", local.replace('.', "::"))
    }

    fn snake(name: &str) -> String {
        let mut out = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() {
                if i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }

    fn write_service(
        out: &mut String,
        package: &str,
        module: &str,
        service: &protobuf::descriptor::ServiceDescriptorProto,
    ) {
        let svc = service.name();
        let svc_upper = snake(svc).to_uppercase();
        let mut client_methods = String::new();
        let mut trait_methods = String::new();
        let mut registrations = String::new();
        for method in &service.method {
            let name = method.name();
            let fn_name = snake(name);
            let req = rust_type(module, package, method.input_type());
            let resp = rust_type(module, package, method.output_type());
            let konst = format!("METHOD_{svc_upper}_{}", fn_name.to_uppercase());
            let (ty, client_ret, client_call, server_args, add) =
                match (method.client_streaming(), method.server_streaming()) {
                    (true, true) => (
                        "Duplex",
                        format!(
                        "(::grpcio::ClientDuplexSender<{req}>, ::grpcio::ClientDuplexReceiver<{resp}>)"
                    ),
                        "duplex_streaming(&",
                        format!(
                        "stream: ::grpcio::RequestStream<{req}>, sink: ::grpcio::DuplexSink<{resp}>"
                    ),
                        "add_duplex_streaming_handler",
                    ),
                    _ => {
                        panic!("build.rs only generates bidirectional streaming methods; {name} is not")
                    }
                };
            writeln!(
                out,
                "/// The `{package}.{svc}/{name}` method descriptor.\n\
                 pub const {konst}: ::grpcio::Method<{req}, {resp}> = ::grpcio::Method {{\n\
                 \x20   ty: ::grpcio::MethodType::{ty},\n\
                 \x20   name: \"/{package}.{svc}/{name}\",\n\
                 \x20   req_mar: ::grpcio::Marshaller {{ ser: ::grpcio::pb_ser, de: ::grpcio::pb_de }},\n\
                 \x20   resp_mar: ::grpcio::Marshaller {{ ser: ::grpcio::pb_ser, de: ::grpcio::pb_de }},\n\
                 }};\n"
            )
            .unwrap();
            writeln!(
                client_methods,
                "    /// Opens `{name}` with call options (metadata, deadlines).\n\
                 \x20   pub fn {fn_name}_opt(&self, opt: ::grpcio::CallOption) -> ::grpcio::Result<{client_ret}> {{\n\
                 \x20       self.client.{client_call}{konst}, opt)\n\
                 \x20   }}"
            )
            .unwrap();
            writeln!(
                trait_methods,
                "    /// Serves one `{name}` call.\n\
                 \x20   fn {fn_name}(&mut self, ctx: ::grpcio::RpcContext, {server_args});"
            )
            .unwrap();
            writeln!(
                registrations,
                "    let mut instance = s.clone();\n\
                 \x20   builder = builder.{add}(&{konst}, move |ctx, req, resp| instance.{fn_name}(ctx, req, resp));"
            )
            .unwrap();
        }
        let snake_svc = snake(svc);
        writeln!(
            out,
            "/// A grpcio client of `{package}.{svc}`.\n\
             #[derive(Clone)]\n\
             pub struct {svc}Client {{\n    client: ::grpcio::Client,\n}}\n\n\
             impl {svc}Client {{\n\
             \x20   /// Wraps a channel to the server.\n\
             \x20   pub fn new(channel: ::grpcio::Channel) -> Self {{\n\
             \x20       {svc}Client {{ client: ::grpcio::Client::new(channel) }}\n    }}\n\
             {client_methods}}}\n\n\
             /// The server side of `{package}.{svc}`.\n\
             pub trait {svc} {{\n{trait_methods}}}\n\n\
             /// Builds the grpcio service that dispatches calls to `s`.\n\
             pub fn create_{snake_svc}<S: {svc} + Send + Clone + 'static>(s: S) -> ::grpcio::Service {{\n\
             \x20   let mut builder = ::grpcio::ServiceBuilder::new();\n\
             {registrations}\
             \x20   builder.build()\n}}"
        )
        .unwrap();
    }
}
