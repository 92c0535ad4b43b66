CREATE TABLE `tags` (
	`id` integer PRIMARY KEY NOT NULL,
	`label` text NOT NULL
);
