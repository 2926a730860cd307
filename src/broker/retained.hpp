// Retained messages, shared by all event loops (section 3.3.1.3). Touched only by
// PUBLISH packets with RETAIN=1 and by new subscriptions, never by plain routing.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

#include "broker/message.hpp"

namespace moat::broker {

class RetainedStore {
 public:
  // A zero-length payload clears the topic [MQTT-3.3.1-10]; otherwise it replaces
  // the topic's retained message [MQTT-3.3.1-5]. Returns true if the set changed.
  bool update(const MessagePtr& m);
  // Calls f for every retained message whose topic matches the (valid) filter.
  void for_each_match(std::string_view filter, const std::function<void(const MessagePtr&)>& f) const;
  std::size_t size() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, MessagePtr, std::less<>> by_topic_;
};

}  // namespace moat::broker
