// In-process server on 127.0.0.1:0 driven by the real client library.
#include <gtest/gtest.h>

#include "client/client.h"
#include "server/server.h"
#include "tests/testing/status_matchers.h"

namespace loraserve {
namespace {

using ::loraserve::testing::StatusIs;

TEST(HealthTest, NotServingUntilReadyThenServingThenDraining) {
  server::ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  ASSERT_OK_AND_ASSIGN(auto server, server::Server::Start(options));
  ASSERT_GT(server->port(), 0);
  ClientOptions copts;
  copts.address = "127.0.0.1:" + std::to_string(server->port());
  copts.default_deadline = absl::Seconds(5);
  ASSERT_OK_AND_ASSIGN(auto client, Client::Create(copts));
  ASSERT_OK_AND_ASSIGN(ServingStatus before, client->Health());
  EXPECT_EQ(before, ServingStatus::kNotServing);
  server->SetServing(true);
  ASSERT_OK_AND_ASSIGN(ServingStatus ready, client->Health());
  EXPECT_EQ(ready, ServingStatus::kServing);
  EXPECT_THAT(client->Health("no.such.Service"), StatusIs(absl::StatusCode::kNotFound));
  server->Shutdown(absl::Seconds(1));
  server->Wait();
  EXPECT_THAT(client->Health(), StatusIs(absl::StatusCode::kUnavailable));
}

TEST(HealthTest, UnreachableServerIsUnavailable) {
  ClientOptions copts;
  copts.address = "127.0.0.1:1";
  copts.default_deadline = absl::Seconds(2);
  ASSERT_OK_AND_ASSIGN(auto client, Client::Create(copts));
  EXPECT_THAT(client->Health(), StatusIs(absl::StatusCode::kUnavailable));
}

TEST(HealthTest, BadListenAddressIsAnError) {
  server::ServerOptions options;
  options.listen_address = "not-an-address:xyz";
  EXPECT_FALSE(server::Server::Start(options).ok());
}

}  // namespace
}  // namespace loraserve
