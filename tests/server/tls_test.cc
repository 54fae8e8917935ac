// TLS on the gRPC port (--tls_cert_file, --tls_key_file, --tls_client_ca_file) with certificates
// made at test time by the OpenSSL C API: a TLS client that trusts the server's CA works; a
// plaintext client or one trusting another CA cannot connect; with a client CA, only clients with a
// certificate it signed get in; bad files fail start-up naming the file; /metrics stays plain HTTP.
// No model needed: Health and the API's "starting" answer show that calls got through.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <fstream>
#include <functional>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "server/server.h"
#include "tests/server/server_test_env.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace loraserve {
namespace {

using ::loraserve::testing::MakeTempDir;
using ::loraserve::testing::StatusIs;
using ::testing::HasSubstr;

struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};

// A key pair and its certificate, as objects (to sign others) and as PEM text.
struct Credential {
  std::unique_ptr<EVP_PKEY, KeyDeleter> key;
  std::unique_ptr<X509, X509Deleter> cert;
  std::string key_pem;
  std::string cert_pem;
};

std::string ToPem(const std::function<int(BIO*)>& write) {
  BIO* bio = BIO_new(BIO_s_mem());
  EXPECT_EQ(write(bio), 1);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(n));
  BIO_free(bio);
  return pem;
}

void AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  ASSERT_NE(ext, nullptr) << value;
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

enum class Role { kCa, kServer, kClient };

// A P-256 key and a certificate for `common_name`, signed by `issuer` (self-signed when null).
Credential MakeCredential(const std::string& common_name, Role role, const Credential* issuer) {
  static long serial = 1;
  Credential c;
  c.key.reset(EVP_EC_gen("P-256"));
  EXPECT_NE(c.key, nullptr);
  c.cert.reset(X509_new());
  X509* x = c.cert.get();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 24 * 3600);
  X509_set_pubkey(x, c.key.get());
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1, 0);
  X509* issuer_cert = issuer != nullptr ? issuer->cert.get() : x;
  X509_set_issuer_name(x, X509_get_subject_name(issuer_cert));
  AddExtension(x, issuer_cert, NID_subject_key_identifier, "hash");
  switch (role) {
    case Role::kCa:
      AddExtension(x, issuer_cert, NID_basic_constraints, "critical,CA:TRUE");
      AddExtension(x, issuer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
      break;
    case Role::kServer:
      AddExtension(x, issuer_cert, NID_basic_constraints, "critical,CA:FALSE");
      AddExtension(x, issuer_cert, NID_key_usage, "critical,digitalSignature,keyEncipherment");
      AddExtension(x, issuer_cert, NID_ext_key_usage, "serverAuth");
      AddExtension(x, issuer_cert, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
      break;
    case Role::kClient:
      AddExtension(x, issuer_cert, NID_basic_constraints, "critical,CA:FALSE");
      AddExtension(x, issuer_cert, NID_key_usage, "critical,digitalSignature");
      AddExtension(x, issuer_cert, NID_ext_key_usage, "clientAuth");
      break;
  }
  EVP_PKEY* signer = issuer != nullptr ? issuer->key.get() : c.key.get();
  EXPECT_GT(X509_sign(x, signer, EVP_sha256()), 0);
  c.cert_pem = ToPem([x](BIO* b) { return PEM_write_bio_X509(b, x); });
  c.key_pem = ToPem([&c](BIO* b) {
    return PEM_write_bio_PrivateKey(b, c.key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  });
  return c;
}

std::string WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    ca_ = MakeCredential("loraserve test CA", Role::kCa, nullptr);
    server_ = MakeCredential("localhost", Role::kServer, &ca_);
    other_ca_ = MakeCredential("some other CA", Role::kCa, nullptr);
    client_ca_ = MakeCredential("loraserve client CA", Role::kCa, nullptr);
    client_ = MakeCredential("tenant-a", Role::kClient, &client_ca_);
    stranger_ = MakeCredential("tenant-b", Role::kClient, &other_ca_);
  }

  server::ServerOptions ServerTlsOptions(bool mutual) {
    server::ServerOptions o;
    o.listen_address = "127.0.0.1:0";
    o.metrics_listen = "127.0.0.1:0";
    o.tls_cert_file = File("server.pem", server_.cert_pem);
    o.tls_key_file = File("server.key", server_.key_pem);
    if (mutual) o.tls_client_ca_file = File("client-ca.pem", client_ca_.cert_pem);
    return o;
  }

  std::string File(const std::string& name, const std::string& text) {
    return WriteFile(absl::StrCat(dir_, "/", name), text);
  }

  // A client of `server` with `tls` (one attempt: a refused handshake is not retried).
  static std::unique_ptr<Client> NewClient(const server::Server& server, const TlsOptions& tls,
                                           const std::string& token = "") {
    ClientOptions o;
    o.address = absl::StrCat("127.0.0.1:", server.port());
    o.default_deadline = absl::Seconds(5);
    o.retry.max_attempts = 1;
    o.tls = tls;
    o.bearer_token = token;
    auto c = Client::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  TlsOptions Trusting(const Credential& ca) const {
    TlsOptions t;
    t.enabled = true;
    t.root_certs_pem = ca.cert_pem;
    return t;
  }

  std::string dir_;
  Credential ca_, server_, other_ca_, client_ca_, client_, stranger_;
};

TEST_F(TlsTest, OnlyClientsTrustingTheServersCaConnect) {
  ASSERT_OK_AND_ASSIGN(auto server, server::Server::Start(ServerTlsOptions(/*mutual=*/false)));
  server->SetServing(true);

  auto trusting = NewClient(*server, Trusting(ca_));
  ASSERT_OK_AND_ASSIGN(ServingStatus health, trusting->Health());
  EXPECT_EQ(health, ServingStatus::kServing);
  // The API is reached over TLS too (the server has no engine: "starting").
  EXPECT_THAT(trusting->Tokenize("x", true),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("starting")));
  // The certificate also names "localhost".
  TlsOptions by_name = Trusting(ca_);
  by_name.server_name_override = "localhost";
  EXPECT_OK(NewClient(*server, by_name)->Health());

  EXPECT_THAT(NewClient(*server, TlsOptions{})->Health(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(NewClient(*server, Trusting(other_ca_))->Health(),
              StatusIs(absl::StatusCode::kUnavailable));
  TlsOptions wrong_name = Trusting(ca_);
  wrong_name.server_name_override = "not-the-server.example";
  EXPECT_THAT(NewClient(*server, wrong_name)->Health(), StatusIs(absl::StatusCode::kUnavailable));

  // /metrics stays plain HTTP.
  ASSERT_OK_AND_ASSIGN(std::string metrics, testing::HttpGet(server->metrics_port(), "/metrics"));
  EXPECT_THAT(metrics, HasSubstr("loraserve_requests_total"));
}

TEST_F(TlsTest, MutualTlsNeedsAClientCertificateFromTheClientCa) {
  ASSERT_OK_AND_ASSIGN(auto server, server::Server::Start(ServerTlsOptions(/*mutual=*/true)));
  server->SetServing(true);

  EXPECT_THAT(NewClient(*server, Trusting(ca_))->Health(), StatusIs(absl::StatusCode::kUnavailable));
  TlsOptions stranger = Trusting(ca_);
  stranger.client_cert_pem = stranger_.cert_pem;
  stranger.client_key_pem = stranger_.key_pem;
  EXPECT_THAT(NewClient(*server, stranger)->Health(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(NewClient(*server, TlsOptions{})->Health(), StatusIs(absl::StatusCode::kUnavailable));

  TlsOptions tenant = Trusting(ca_);
  tenant.client_cert_pem = client_.cert_pem;
  tenant.client_key_pem = client_.key_pem;
  auto client = NewClient(*server, tenant);
  ASSERT_OK_AND_ASSIGN(ServingStatus health, client->Health());
  EXPECT_EQ(health, ServingStatus::kServing);
  EXPECT_THAT(client->ListAdapters(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("starting")));
}

TEST_F(TlsTest, BearerTokensWorkOverTls) {
  server::ServerOptions options = ServerTlsOptions(/*mutual=*/false);
  options.auth_tokens_file = File("tokens", "tls-token\n");
  ASSERT_OK_AND_ASSIGN(auto server, server::Server::Start(options));
  EXPECT_THAT(NewClient(*server, Trusting(ca_))->Tokenize("x", true),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(NewClient(*server, Trusting(ca_), "tls-token")->Tokenize("x", true),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("starting")));
}

TEST_F(TlsTest, BadFilesFailStartUpNamingTheFile) {
  const auto start_error = [](const server::ServerOptions& o) {
    auto s = server::Server::Start(o);
    return s.ok() ? absl::OkStatus() : s.status();
  };
  const server::ServerOptions good = ServerTlsOptions(/*mutual=*/true);
  ASSERT_OK(start_error(good));

  server::ServerOptions o = good;
  o.tls_key_file = "";
  EXPECT_THAT(start_error(o), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("both")));
  o = good;
  o.tls_cert_file = "";
  EXPECT_THAT(start_error(o), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("both")));
  o = good;
  o.tls_cert_file = o.tls_key_file = "";
  EXPECT_THAT(start_error(o), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("client CA")));

  o = good;
  o.tls_cert_file = dir_ + "/missing.pem";
  EXPECT_THAT(start_error(o), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(o.tls_cert_file)));
  o = good;
  o.tls_cert_file = File("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
  EXPECT_THAT(start_error(o), StatusIs(absl::StatusCode::kInvalidArgument,
                                       HasSubstr(absl::StrCat(o.tls_cert_file, " holds no PEM certificate"))));
  o = good;
  o.tls_key_file = File("cert-as-key.pem", server_.cert_pem);
  EXPECT_THAT(start_error(o), StatusIs(absl::StatusCode::kInvalidArgument,
                                       HasSubstr(absl::StrCat(o.tls_key_file, " holds no PEM private key"))));
  o = good;
  o.tls_key_file = File("other.key", client_.key_pem);
  EXPECT_THAT(start_error(o), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("does not match")));
  o = good;
  o.tls_client_ca_file = dir_ + "/missing-ca.pem";
  EXPECT_THAT(start_error(o), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(o.tls_client_ca_file)));
  o = good;
  o.tls_client_ca_file = File("empty-ca.pem", "");
  EXPECT_THAT(start_error(o), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no PEM certificate")));
}

}  // namespace
}  // namespace loraserve
