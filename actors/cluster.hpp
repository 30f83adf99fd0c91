// The control node's door for worker nodes (join with the cluster secret) and
// the registration of every message type that crosses nodes. CAF core only:
// tools/ owns the middleman (publish, remote_actor).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <caf/fwd.hpp>

#include "actors/interfaces.hpp"
#include "actors/local_link.hpp"

namespace infergrid {

/// The version of what travels between nodes, sent in CAF's handshake
/// (middleman.app-identifiers): nodes of different versions refuse each
/// other at once instead of misreading messages. Bump it whenever a message
/// type registered below changes shape (2: worker_registration::runner;
/// 3: the local link's fields in join_reply and worker_registration;
/// 4: the local link's frame header and streams over the link).
inline constexpr const char* wire_version = "infergrid-wire-4";

/// Registers every type that travels between nodes inside messages (CAF
/// 0.17 needs them by name on both sides). Call on the config of every
/// process that loads the middleman, before the actor system starts.
void add_cluster_message_types(caf::actor_system_config& cfg);

struct door_config {
  /// cluster.secret; an empty secret refuses every join.
  std::string secret;
  /// The control node's own SQLite file: a worker that says it opens a file
  /// itself must name this one (compared after resolving the paths).
  std::string db_path;
  int64_t lease_ms = 30000;
  queue_actor queue;
  broker_actor broker;
  /// The local link hub (cluster.local_link); null: none is offered.
  std::shared_ptr<link_hub> links;
};

/// Spawns the door (see door_actor in interfaces.hpp).
door_actor spawn_door(caf::actor_system& sys, door_config cfg);

/// Compares two strings in time that depends only on their lengths.
bool constant_time_equal(const std::string& x, const std::string& y);

/// `chars` random hex characters from /dev/urandom: secrets and tokens.
std::string random_hex(int chars);

} // namespace infergrid
