"""The Admin GraphQL schema subset the emulator serves."""

from __future__ import annotations

from graphql import GraphQLSchema, build_schema

SCHEMA_SDL = """
schema { query: QueryRoot mutation: Mutation }

scalar DateTime
scalar URL
scalar HTML
scalar Money
scalar UnsignedInt64
scalar Decimal

enum ProductStatus { ACTIVE ARCHIVED DRAFT }
enum ProductSortKeys { CREATED_AT ID INVENTORY_TOTAL PRODUCT_TYPE PUBLISHED_AT RELEVANCE TITLE UPDATED_AT VENDOR }
enum MediaContentType { EXTERNAL_VIDEO IMAGE MODEL_3D VIDEO }
enum MediaStatus { FAILED PROCESSING READY UPLOADED }
enum MediaPreviewImageStatus { FAILED PROCESSING READY UPLOADED }
enum CropRegion { BOTTOM CENTER LEFT REGION RIGHT TOP }
enum ImageContentType { JPG PNG WEBP }
enum CountPrecision { AT_LEAST EXACT }
enum CurrencyCode { CAD EUR GBP JPY USD }
enum BulkOperationStatus { CANCELED CANCELING COMPLETED CREATED EXPIRED FAILED RUNNING }
enum BulkOperationErrorCode { ACCESS_DENIED INTERNAL_SERVER_ERROR TIMEOUT }
enum BulkOperationType { MUTATION QUERY }
enum BulkOperationUserErrorCode { INVALID OPERATION_IN_PROGRESS }
enum EventSortKeys { CREATED_AT ID RELEVANCE }
enum EventSubjectType {
  ARTICLE BLOG COLLECTION COMMENT COMPANY COMPANY_LOCATION CUSTOMER DISCOUNT_AUTOMATIC_BXGY DISCOUNT_AUTOMATIC_NODE
  DISCOUNT_CODE_NODE DISCOUNT_NODE DRAFT_ORDER INVENTORY_TRANSFER ORDER PAGE PRICE_RULE PRODUCT PRODUCT_VARIANT UNKNOWN
}

input ImageTransformInput {
  crop: CropRegion
  maxWidth: Int
  maxHeight: Int
  scale: Int = 1
  preferredContentType: ImageContentType
}

interface Node { id: ID! }

interface Media {
  alt: String
  id: ID!
  mediaContentType: MediaContentType!
  preview: MediaPreviewImage
  status: MediaStatus!
}

type PageInfo {
  hasNextPage: Boolean!
  hasPreviousPage: Boolean!
  startCursor: String
  endCursor: String
}

type Image {
  id: ID
  altText: String
  url(transform: ImageTransformInput): URL!
  src: URL!
  originalSrc: URL!
  transformedSrc: URL!
  width: Int
  height: Int
}

type MediaPreviewImage { image: Image status: MediaPreviewImageStatus! }

type MediaImage implements Media & Node {
  alt: String
  id: ID!
  image: Image
  mediaContentType: MediaContentType!
  preview: MediaPreviewImage
  status: MediaStatus!
  mimeType: String
  createdAt: DateTime!
  updatedAt: DateTime!
}

type VideoSource { url: String! mimeType: String! format: String! width: Int! height: Int! }

type Video implements Media & Node {
  alt: String
  id: ID!
  mediaContentType: MediaContentType!
  preview: MediaPreviewImage
  status: MediaStatus!
  filename: String!
  sources: [VideoSource!]!
}

type MediaEdge { cursor: String! node: Media! }
type MediaConnection { edges: [MediaEdge!]! nodes: [Media!]! pageInfo: PageInfo! }
type ImageEdge { cursor: String! node: Image! }
type ImageConnection { edges: [ImageEdge!]! nodes: [Image!]! pageInfo: PageInfo! }

type SelectedOption { name: String! value: String! }
type ProductOption { id: ID! name: String! position: Int! values: [String!]! }

type ProductVariant implements Node {
  id: ID!
  legacyResourceId: UnsignedInt64!
  title: String!
  price: Money!
  compareAtPrice: Money
  sku: String
  availableForSale: Boolean!
  inventoryQuantity: Int
  position: Int!
  createdAt: DateTime!
  updatedAt: DateTime!
  selectedOptions: [SelectedOption!]!
  image: Image
}
type ProductVariantEdge { cursor: String! node: ProductVariant! }
type ProductVariantConnection { edges: [ProductVariantEdge!]! nodes: [ProductVariant!]! pageInfo: PageInfo! }

type Collection implements Node { id: ID! handle: String! title: String! }
type CollectionEdge { cursor: String! node: Collection! }
type CollectionConnection { edges: [CollectionEdge!]! nodes: [Collection!]! pageInfo: PageInfo! }

type Count { count: Int! precision: CountPrecision! }
type MoneyV2 { amount: Decimal! currencyCode: CurrencyCode! }
type ProductPriceRangeV2 { minVariantPrice: MoneyV2! maxVariantPrice: MoneyV2! }

type Product implements Node {
  id: ID!
  legacyResourceId: UnsignedInt64!
  title: String!
  handle: String!
  descriptionHtml: HTML!
  description(truncateAt: Int): String!
  vendor: String!
  productType: String!
  status: ProductStatus!
  tags: [String!]!
  onlineStoreUrl: URL
  createdAt: DateTime!
  updatedAt: DateTime!
  publishedAt: DateTime
  totalInventory: Int!
  priceRangeV2: ProductPriceRangeV2!
  featuredImage: Image
  featuredMedia: Media
  mediaCount: Count
  variantsCount: Count
  options(first: Int): [ProductOption!]!
  media(first: Int, after: String, last: Int, before: String, reverse: Boolean = false): MediaConnection!
  images(first: Int, after: String, last: Int, before: String, reverse: Boolean = false): ImageConnection!
  variants(first: Int, after: String, last: Int, before: String, reverse: Boolean = false): ProductVariantConnection!
  collections(first: Int, after: String, last: Int, before: String, reverse: Boolean = false): CollectionConnection!
}
type ProductEdge { cursor: String! node: Product! }
type ProductConnection { edges: [ProductEdge!]! nodes: [Product!]! pageInfo: PageInfo! }

interface Event {
  id: ID!
  action: String!
  appTitle: String
  attributeToApp: Boolean!
  attributeToUser: Boolean!
  createdAt: DateTime!
  criticalAlert: Boolean!
  message: String!
}
type BasicEvent implements Event & Node {
  id: ID!
  action: String!
  appTitle: String
  attributeToApp: Boolean!
  attributeToUser: Boolean!
  createdAt: DateTime!
  criticalAlert: Boolean!
  message: String!
  subjectId: ID!
  subjectType: EventSubjectType!
}
type EventEdge { cursor: String! node: Event! }
type EventConnection { edges: [EventEdge!]! nodes: [Event!]! pageInfo: PageInfo! }

type Domain { host: String! url: URL! }
type Shop implements Node {
  id: ID!
  name: String!
  myshopifyDomain: String!
  primaryDomain: Domain!
  url: URL!
  currencyCode: String!
  ianaTimezone: String!
}

type BulkOperation implements Node {
  id: ID!
  status: BulkOperationStatus!
  errorCode: BulkOperationErrorCode
  createdAt: DateTime!
  completedAt: DateTime
  objectCount: UnsignedInt64!
  rootObjectCount: UnsignedInt64!
  fileSize: UnsignedInt64
  url: URL
  partialDataUrl: URL
  query: String!
  type: BulkOperationType!
}
type BulkOperationUserError { field: [String!] message: String! code: BulkOperationUserErrorCode }
type BulkOperationRunQueryPayload { bulkOperation: BulkOperation userErrors: [BulkOperationUserError!]! }
type UserError { field: [String!] message: String! }
type BulkOperationCancelPayload { bulkOperation: BulkOperation userErrors: [UserError!]! }

enum WebhookSubscriptionTopic { PRODUCTS_CREATE PRODUCTS_DELETE PRODUCTS_UPDATE }
enum WebhookSubscriptionFormat { JSON XML }
type WebhookHttpEndpoint { callbackUrl: URL! }
type WebhookEventBridgeEndpoint { arn: String! }
type WebhookPubSubEndpoint { pubSubProject: String! pubSubTopic: String! }
union WebhookSubscriptionEndpoint = WebhookEventBridgeEndpoint | WebhookHttpEndpoint | WebhookPubSubEndpoint
type WebhookSubscription implements Node {
  id: ID!
  legacyResourceId: UnsignedInt64!
  topic: WebhookSubscriptionTopic!
  format: WebhookSubscriptionFormat!
  "Deprecated: use uri."
  callbackUrl: URL!
  "Deprecated: use uri."
  endpoint: WebhookSubscriptionEndpoint!
  "From 2025-10."
  uri: String!
  includeFields: [String!]!
  metafieldNamespaces: [String!]!
  filter: String
  createdAt: DateTime!
  updatedAt: DateTime!
}
type WebhookSubscriptionEdge { cursor: String! node: WebhookSubscription! }
type WebhookSubscriptionConnection {
  edges: [WebhookSubscriptionEdge!]!
  nodes: [WebhookSubscription!]!
  pageInfo: PageInfo!
}
input WebhookSubscriptionInput {
  "Deprecated from 2025-10: use uri."
  callbackUrl: URL
  "From 2025-10."
  uri: String
  format: WebhookSubscriptionFormat
  includeFields: [String!]
  metafieldNamespaces: [String!]
  filter: String
}
type WebhookSubscriptionCreatePayload { webhookSubscription: WebhookSubscription userErrors: [UserError!]! }
type WebhookSubscriptionUpdatePayload { webhookSubscription: WebhookSubscription userErrors: [UserError!]! }
type WebhookSubscriptionDeletePayload { deletedWebhookSubscriptionId: ID userErrors: [UserError!]! }

type QueryRoot {
  products(
    first: Int, after: String, last: Int, before: String, reverse: Boolean = false,
    sortKey: ProductSortKeys = ID, query: String
  ): ProductConnection!
  product(id: ID!): Product
  node(id: ID!): Node
  productsCount(query: String, limit: Int = 10000): Count
  events(
    first: Int, after: String, last: Int, before: String, reverse: Boolean = false,
    sortKey: EventSortKeys = ID, query: String
  ): EventConnection!
  currentBulkOperation(type: BulkOperationType = QUERY): BulkOperation
  shop: Shop!
  webhookSubscriptions(
    first: Int, after: String, last: Int, before: String, reverse: Boolean = false,
    topics: [WebhookSubscriptionTopic!], callbackUrl: URL, uri: String, format: WebhookSubscriptionFormat
  ): WebhookSubscriptionConnection!
  webhookSubscription(id: ID!): WebhookSubscription
}

type Mutation {
  bulkOperationRunQuery(query: String!, groupObjects: Boolean): BulkOperationRunQueryPayload
  bulkOperationCancel(id: ID!): BulkOperationCancelPayload
  webhookSubscriptionCreate(
    topic: WebhookSubscriptionTopic!, webhookSubscription: WebhookSubscriptionInput!
  ): WebhookSubscriptionCreatePayload
  webhookSubscriptionUpdate(id: ID!, webhookSubscription: WebhookSubscriptionInput!): WebhookSubscriptionUpdatePayload
  webhookSubscriptionDelete(id: ID!): WebhookSubscriptionDeletePayload
}
"""



SCHEMA: GraphQLSchema = build_schema(SCHEMA_SDL)
