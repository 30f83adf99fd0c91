// Nodes of different wire versions refuse each other in CAF's handshake
// (middleman.app-identifiers) instead of misreading each other's messages.
#define CAF_SUITE cluster_wire
#include "tests/unit/test_support.hpp"

#include <caf/test/unit_test.hpp>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>

#include <string>
#include <vector>

#include "actors/cluster.hpp"
#include "tools/serve.hpp"

using namespace infergrid;

namespace {

caf::behavior idle_door(caf::event_based_actor*) {
  return {[](int x) { return x; }};
}

// A node configured as serve, gateway and worker configure theirs.
struct node_config : caf::actor_system_config {
  node_config() {
    auto problem = configure_cluster(*this, cluster_settings{});
    CAF_REQUIRE(problem.empty());
  }
};

// A node of another version: the middleman, another identifier.
struct other_version_config : caf::actor_system_config {
  other_version_config() {
    load<caf::io::middleman>();
    add_cluster_message_types(*this);
    set("middleman.app-identifiers", std::vector<std::string>{"infergrid-wire-1"});
  }
};

} // namespace

CAF_TEST(a node of the same wire version connects and one of another is refused) {
  CAF_CHECK_EQUAL(std::string{wire_version}.rfind("infergrid-wire-", 0), 0u);
  node_config server_cfg;
  caf::actor_system server{server_cfg};
  auto door = server.spawn(idle_door);
  auto port = server.middleman().publish(door, 0, "127.0.0.1");
  CAF_REQUIRE(port);
  {
    node_config cfg;
    caf::actor_system same{cfg};
    auto remote = same.middleman().remote_actor("127.0.0.1", *port);
    CAF_CHECK(remote);
  }
  {
    other_version_config cfg;
    caf::actor_system other{cfg};
    auto remote = other.middleman().remote_actor("127.0.0.1", *port);
    CAF_REQUIRE(!remote);
    CAF_CHECK_EQUAL(remote.error(), caf::sec::incompatible_application_ids);
  }
  caf::anon_send_exit(door, caf::exit_reason::user_shutdown);
}
