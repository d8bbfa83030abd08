// Lru: a map that keeps its entries in the order they were last used, for the bounded caches of
// the daemon (memory chunks, the block cache's index, whole-file copies, open store files, NFS
// file handles). It only orders: what bounds a cache (a count, bytes) and what to do with an
// evicted entry (unlink a file, close a handle) stay with the cache, which pops the oldest
// entries until its bound holds.
//
// Order, the one meaning in the project: the OLDEST entry is the least recently used, the one to
// evict first; the NEWEST is the one inserted or touched last. insert() and touch() make an entry
// the newest; find(), contains() and iteration leave the order as it is. Iteration goes from the
// oldest to the newest.
//
// Thread-safety: none; the owner guards it with its own lock (GUARDED_BY in the owner).
// Pointers returned by find() and touch() stay valid until that entry is erased or the Lru
// cleared (entries never move in memory).
#pragma once

#include <cstddef>
#include <functional>
#include <list>
#include <optional>
#include <unordered_map>
#include <utility>

namespace extrafs {

template <typename Key, typename Value, typename Hash = std::hash<Key>, typename Equal = std::equal_to<Key>>
class Lru {
 public:
  using Entry = std::pair<Key, Value>;
  using const_iterator = typename std::list<Entry>::const_iterator;

  size_t size() const { return index_.size(); }
  bool empty() const { return index_.empty(); }
  bool contains(const Key& k) const { return index_.count(k) != 0; }

  // The value of `k`, or null; the order is left alone.
  Value* find(const Key& k) {
    auto it = index_.find(k);
    return it == index_.end() ? nullptr : &it->second->second;
  }
  // The value of `k`, which becomes the newest entry; null if absent.
  Value* touch(const Key& k) {
    auto it = index_.find(k);
    if (it == index_.end()) return nullptr;
    order_.splice(order_.end(), order_, it->second);
    return &it->second->second;
  }

  // Adds `k` as the newest entry and returns its value and true; if `k` is there already, leaves
  // it (value and place) as it is and returns it and false.
  std::pair<Value*, bool> insert(const Key& k, Value v) {
    auto [it, inserted] = index_.try_emplace(k);
    if (!inserted) return {&it->second->second, false};
    order_.emplace_back(k, std::move(v));
    it->second = std::prev(order_.end());
    return {&it->second->second, true};
  }

  // Removes `k` and returns its value (nullopt if absent).
  std::optional<Value> take(const Key& k) {
    auto it = index_.find(k);
    if (it == index_.end()) return std::nullopt;
    std::optional<Value> v(std::move(it->second->second));
    order_.erase(it->second);
    index_.erase(it);
    return v;
  }
  bool erase(const Key& k) { return take(k).has_value(); }

  // The least recently used entry. REQUIRES: !empty().
  const Entry& oldest() const { return order_.front(); }
  // Removes the least recently used entry and returns it. REQUIRES: !empty().
  Entry pop_oldest() {
    Entry e = std::move(order_.front());
    index_.erase(e.first);
    order_.pop_front();
    return e;
  }

  void clear() {
    index_.clear();
    order_.clear();
  }

  // Oldest first.
  const_iterator begin() const { return order_.begin(); }
  const_iterator end() const { return order_.end(); }

 private:
  std::list<Entry> order_;  // front = oldest, back = newest
  std::unordered_map<Key, typename std::list<Entry>::iterator, Hash, Equal> index_;
};

}  // namespace extrafs
