/*
 * Reload on file change: with `reload = { watch = true }`, the worker watches
 * the directories that hold its config file and its policy scripts, and
 * reloads from its config path once changes have settled for the debounce
 * time.
 *
 * Directories, not files, are watched: an editor that saves by writing a
 * new file and renaming it over the old one, or a Kubernetes ConfigMap
 * volume that swaps its `..data` symlink, replaces the inode a file watch
 * would be holding, but both show up as events in the directory.
 */
#ifndef FERRY_WATCH_H
#define FERRY_WATCH_H

struct fy_worker;

/* (Re)creates the watches for the live generation's files; stops them if watch is off. */
void fy_watch_update(struct fy_worker *w);
void fy_watch_close(struct fy_worker *w);

#endif
